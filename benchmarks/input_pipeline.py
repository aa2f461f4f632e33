"""Examples/s of the input pipeline alone (no model) on av_digits.

    python -m benchmarks.input_pipeline [--name av_digits] [--batch 256] [--steps 50] [--augment]

Reports the one-off cost of decoding the split into memory and then the steady
rate of ``make_iterator`` (gather, normalise, optional augmentation and
modality dropout, prefetch thread).
"""
from __future__ import annotations

import argparse
import time


def measure(name: str = "av_digits", *, batch: int = 256, steps: int = 50, data_dir=None,
            backend: str = "tf", augment: bool = False) -> dict:
    """Steady examples/s of ``make_iterator`` on the train split (no model).

    Returns num_examples, load_s (one-off decode + cache), batch_s (seconds
    per batch), examples_per_s, batch, steps, backend, augment.
    """
    from mmjax.data import default_config, make_iterator, split_columns

    cfg = default_config(name)
    cfg.data_dir = data_dir
    cfg.backend = backend
    if augment:
        for m, mc in cfg.modalities.items():
            if mc.kind == "image":
                mc.augment_pad = 2
            elif mc.kind == "audio":
                mc.augment_gain_db, mc.augment_shift, mc.augment_noise = 6.0, 800, 0.01
        cfg.modality_dropout = {m: 0.2 for m in cfg.modalities}
    t = time.perf_counter()
    n = len(split_columns(cfg, "train")["index"])
    load_s = time.perf_counter() - t
    it = make_iterator(cfg, "train", global_batch_size=batch, seed=0, train=True, process_index=0, process_count=1)
    next(it)  # warm the prefetch thread
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    dt = time.perf_counter() - t
    return {"name": name, "num_examples": n, "load_s": load_s, "batch_s": dt / steps,
            "examples_per_s": steps * batch / dt, "batch": batch, "steps": steps,
            "backend": backend, "augment": augment}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default="av_digits")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--backend", default="tf", choices=("tf", "numpy"))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--augment", action="store_true", help="image crop, audio gain/shift/noise, modality dropout")
    args = p.parse_args(argv)

    r = measure(args.name, batch=args.batch, steps=args.steps, data_dir=args.data_dir,
                backend=args.backend, augment=args.augment)
    print(
        f"{args.name} train ({r['num_examples']} examples, backend {args.backend}, augment {args.augment}): "
        f"decode+cache {r['load_s']:.1f} s once; {r['examples_per_s']:,.0f} examples/s "
        f"({r['batch_s'] * 1e3:.1f} ms per batch of {args.batch})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
