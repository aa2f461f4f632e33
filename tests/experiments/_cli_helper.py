"""Runs ``python -m experiments`` in this process (jit caches shared between calls)."""
import importlib

import experiments.__main__ as cli


def run_cli(*args: str) -> int:
    """``experiments.__main__.main(args)``, leaving out commands whose module is not in this tree."""
    saved = dict(cli.COMMANDS)
    for k, v in saved.items():
        try:
            importlib.import_module("experiments.commands." + v)
        except ModuleNotFoundError:
            cli.COMMANDS.pop(k)
    try:
        return cli.main(list(args))
    finally:
        cli.COMMANDS.clear()
        cli.COMMANDS.update(saved)
