"""``python -m experiments <command> [...]``: the mmjax command line.

Each command lives in ``experiments/commands/<name>.py`` and exposes
``add_parser(subparsers)`` (registers its arguments) and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

from experiments.errors import UserError

# Command name -> module in experiments.commands.
COMMANDS = {
    "demo": "demo",
    "train": "train",
    "eval": "eval",
    "list": "list",
    "data": "data",
    "sweep": "sweep",
    "bench": "bench",
    "toy": "toy",
    "predict": "predict",
    "export": "export",
    "explain": "explain",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(f"experiments.commands.{module}")
        except ImportError as e:
            # One missing or broken command must not take the others down: it is
            # listed, and reported only when it is the one asked for.
            p = sub.add_parser(name, help=f"(unavailable: {e})", add_help=False)
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(_run=_unavailable(name, module, e))
            continue
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def _unavailable(name: str, module: str, error: ImportError):
    def run(args) -> int:
        del args
        raise UserError(f"command {name!r} is unavailable: experiments.commands.{module} failed to import "
                        f"({type(error).__name__}: {error})")
    return run


# Commands that compile programs: they use the persistent compilation cache.
COMPILING = ("demo", "train", "eval", "sweep", "predict", "export", "explain", "toy")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in COMPILING:
        from experiments import compilation_cache

        compilation_cache.enable()
    from mmjax.errors import MmjaxError
    from mmjax.train import files
    from experiments import storage_faults

    with storage_faults.HeldBack() as held:
        try:
            return int(args._run(args) or 0)
        except (UserError, MmjaxError) as e:  # a mistake the message names; anything else is a bug: traceback
            held.finish(storage_failed=isinstance(e, files.StorageError))
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as e:  # a full or read-only disk (eval, data, export...): one line too
            fault = files.storage_fault(e, fallback=getattr(args, "workdir", None) or getattr(args, "data_dir", None))
            if fault is None:
                raise
            held.finish(storage_failed=True)
            print(f"error: {' '.join(str(fault).split())}", file=sys.stderr)
            return 2


def _exit(code: int) -> None:
    """Ends the process with ``code``; after an interrupt, without tearing the interpreter down.

    A second Ctrl-C while the first step compiles stops the command with XLA still
    compiling on its own threads; finalizing the interpreter under them crashed
    (SIGSEGV, exit 139) in 2 of 5 tries. The lock is released and the output flushed by then.
    """
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":
    try:
        _exit(main())
    except KeyboardInterrupt:  # before a command started (while its modules import)
        print("interrupted", file=sys.stderr)
        _exit(130)
