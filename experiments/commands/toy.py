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
    from experiments.toy_fusion_task import FUSION_CONFIGS, ToyTask, train_and_evaluate

    names = [b for b in args.blocks.split(",") if b] or mmjax.fusion.names()
    known = mmjax.fusion.names()
    for b in names:
        if b not in known:
            raise UserError(f"unknown fusion block {b!r}; known: {', '.join(known)}")
        if b not in FUSION_CONFIGS:
            raise UserError(f"fusion block {b!r} has no demo config in experiments/toy_fusion_task.py")
    if args.steps < 1 or args.train_size < 1 or args.test_size < 1:
        raise UserError("--steps, --train-size and --test-size must be positive")
    try:
        task = ToyTask(k=args.k, interaction=args.task, seed=args.seed)
    except ValueError as e:
        raise UserError(str(e)) from None

    a, b = (m for m, _ in task.dims)
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
        r = train_and_evaluate(
            name, task, steps=args.steps, learning_rate=args.lr, n_train=args.train_size,
            n_test=args.test_size, seed=args.seed,
        )
        print(f"{r.block:<16} {r.params:>8} {r.train_accuracy:>10.3f} {r.test_accuracy:>9.3f} {r.steps_per_s:>9.1f}",
              flush=True)
    return 0
