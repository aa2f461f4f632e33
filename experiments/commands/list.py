"""``python -m experiments list``: the experiments in experiments/configs/ with their descriptions."""
from __future__ import annotations

from experiments import config_utils


def add_parser(subparsers):
    return subparsers.add_parser("list", help="list the experiments", description=__doc__.splitlines()[0])


def run(args) -> int:
    del args
    names = config_utils.experiment_names()
    width = max(len(n) for n in names)
    for name in names:
        config = config_utils.load_config(name)
        print(f"{name:<{width}}  {config.get('description', '')}")
    return 0
