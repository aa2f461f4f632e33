"""``python -m experiments toy``: every fusion block on a synthetic two-modality task (seconds per block)."""
from __future__ import annotations

import argparse
import textwrap

from experiments.errors import UserError

DESCRIPTION = "train every fusion block on a synthetic task that needs both modalities"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("toy", help=DESCRIPTION, description=DESCRIPTION)
    p.add_argument("--blocks", default="", help="comma-separated fusion block names (default: all registered)")
    p.add_argument("--task", choices=("pair", "xor"), default="pair",
                   help="label = k*c_a + c_b ('pair', additive fusion suffices) or (c_a + c_b) mod k ('xor')")
    p.add_argument("--k", type=int, default=2, help="classes hidden in each modality")
    p.add_argument("--steps", type=int, default=300, help="full-batch Adam steps per block")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    p.add_argument("--train-size", type=int, default=256)
    p.add_argument("--test-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args) -> int:
    # Imported here so `python -m experiments --help` stays fast.
    import mmjax.fusion
    from mmjax.data.toy_task import ToyTask
    from mmjax.fusion.tiny_configs import TINY_CONFIGS, tiny_classifier_config
    from mmjax.train.full_batch import fit_full_batch

    names = [b for b in args.blocks.split(",") if b] or mmjax.fusion.names()
    known = mmjax.fusion.names()
    for b in names:
        if b not in known:
            raise UserError(f"unknown fusion block {b!r}; known: {', '.join(known)}")
        if b not in TINY_CONFIGS:
            raise UserError(f"fusion block {b!r} has no tiny config in mmjax/fusion/tiny_configs.py")
    if args.steps < 1 or args.train_size < 1 or args.test_size < 1:
        raise UserError("--steps, --train-size and --test-size must be positive")
    task = ToyTask(k=args.k, interaction=args.task, seed=args.seed)  # bad --k: a DataConfigError, one line from main
    train, test = task.splits(args.train_size, args.test_size, seed=args.seed)

    a, b = task.modalities
    rule = f"label = {task.k}*c_{a} + c_{b}" if task.interaction == "pair" else f"label = (c_{a} + c_{b}) mod {task.k}"
    print(textwrap.dedent(f"""\
        Fusion demo on SYNTHETIC data (not a benchmark).
        Each example hides a class c_{a} in modality {a!r} (tokens {dict(task.lengths)[a]} x {dict(task.dims)[a]})
        and an independent class c_{b} in modality {b!r} (tokens {dict(task.lengths)[b]} x {dict(task.dims)[b]}),
        c in 0..{task.k - 1}, as noisy prototypes; {rule} ({task.num_classes} classes).
        One modality alone can reach at most {task.single_modality_max_accuracy:.2f} accuracy.
        Model: MLP encoder per modality -> fusion block -> Dense head; {args.steps} full-batch Adam steps
        on {args.train_size} examples, test accuracy on {args.test_size} held-out examples.
        """))
    header = f"{'block':<16} {'params':>8} {'train acc':>10} {'test acc':>9} {'steps/s':>9}"
    print(header)
    print("-" * len(header))
    for name in names:
        r = fit_full_batch(tiny_classifier_config(name, task.modalities), task.num_classes, train, test,
                           steps=args.steps, learning_rate=args.lr, seed=args.seed)
        print(f"{name:<16} {r.params:>8} {r.train_accuracy:>10.3f} {r.test_accuracy:>9.3f} {r.steps_per_s:>9.1f}",
              flush=True)
    return 0
