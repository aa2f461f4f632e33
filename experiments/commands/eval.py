"""``python -m experiments eval EXPERIMENT --workdir DIR [--latest] [--config.KEY=VALUE ...]``.

Restores DIR's best checkpoint (by ``checkpoint.best_metric``; ``--latest``
for the most recent) and writes DIR/eval/metrics.json.
"""
from __future__ import annotations

from experiments.commands import train as train_cmd
from experiments.errors import UserError


def add_parser(subparsers):
    p = train_cmd.make_subparser(subparsers, "eval", "evaluate the best (or latest) checkpoint of a run")
    p.add_argument("--latest", action="store_true", help="use the latest checkpoint instead of the best")
    return p


def run(args) -> int:
    config = train_cmd.prepare(args)
    from mmjax.train import loop
    try:
        loop.evaluate(config, args.workdir, which="latest" if args.latest else "best")
    except train_cmd._user_errors() as e:
        raise UserError(str(e)) from None
    return 0
