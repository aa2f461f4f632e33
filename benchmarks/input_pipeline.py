"""Examples/s of the input pipeline alone (no model) on av_digits.

    python -m benchmarks.input_pipeline [--name av_digits] [--batch 256] [--steps 50] [--augment]

Reports the one-off cost of decoding the split into memory and then the steady
rate of ``make_iterator`` (gather, normalise, optional augmentation and
modality dropout, prefetch thread).
"""
from __future__ import annotations

import argparse
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default="av_digits")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--backend", default="tf", choices=("tf", "numpy"))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--augment", action="store_true", help="image crop, audio gain/shift/noise, modality dropout")
    args = p.parse_args(argv)

    from mmjax.data import default_config, make_iterator, split_columns

    cfg = default_config(args.name)
    cfg.data_dir = args.data_dir
    cfg.backend = args.backend
    if args.augment:
        for m, mc in cfg.modalities.items():
            if mc.kind == "image":
                mc.augment_pad = 2
            elif mc.kind == "audio":
                mc.augment_gain_db, mc.augment_shift, mc.augment_noise = 6.0, 800, 0.01
        cfg.modality_dropout = {m: 0.2 for m in cfg.modalities}
    t = time.perf_counter()
    n = len(split_columns(cfg, "train")["index"])
    load_s = time.perf_counter() - t
    it = make_iterator(cfg, "train", global_batch_size=args.batch, seed=0, train=True, process_index=0, process_count=1)
    next(it)  # warm the prefetch thread
    t = time.perf_counter()
    for _ in range(args.steps):
        next(it)
    dt = time.perf_counter() - t
    print(
        f"{args.name} train ({n} examples, backend {args.backend}, augment {args.augment}): "
        f"decode+cache {load_s:.1f} s once; {args.steps * args.batch / dt:,.0f} examples/s "
        f"({dt / args.steps * 1e3:.1f} ms per batch of {args.batch})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
