"""The av_digits input pipeline against the av_digits train step, timed in interleaved rounds.

Both run in one process: the train step of the av_digits experiment config
(the Runner's own compiled step, single device, a random batch of the real
shapes already on device: :func:`benchmarks.train_throughput.compiled_step`)
and ``mmjax.data.make_iterator`` at the same batch size (P = 1). Each of
``rounds`` rounds times ``steps`` batches of each, in alternating order, so a
drift of a shared machine hits both alike (the convention of
:func:`benchmarks.common.time_interleaved`); medians over rounds are reported.
The batches the pipeline's prefetch threads prepared while the train step ran
are taken before its clock starts.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Dict, Optional


def measure(dataset: str, batch_size: int, data_dir: Optional[str], *, rounds: int = 5, steps: int = 20,
            warmup: int = 3) -> Dict[str, Any]:
    """Examples/s of the pipeline and of the train step, and their ratio; {"skipped": why} when either is missing."""
    try:
        import jax

        from benchmarks import train_throughput as tt
        from benchmarks.input_pipeline import mmjax_config
        from mmjax.data import make_iterator

        step = tt.compiled_step(tt.av_digits_case(batch_size), "single")
        cfg = mmjax_config({"dataset": dataset, "data_dir": data_dir})
        it = make_iterator(cfg, "train", global_batch_size=batch_size, seed=0, train=True, process_index=0,
                           process_count=1)
        for _ in range(warmup):
            next(it)
    except Exception as e:  # the per-process numbers stand without it
        return {"skipped": f"{type(e).__name__}: {e}"}
    compiled, state, batch = step["compiled"], step["state"], step["batch"]
    state, _ = compiled(state, batch)
    jax.block_until_ready(state)
    ahead = int(cfg.get("prefetch", 0) or 0)
    pipeline, train = [], []
    for r in range(rounds):
        for what in ("pipeline", "train") if r % 2 == 0 else ("train", "pipeline"):
            if what == "pipeline":
                for _ in range(ahead):
                    next(it)
                t = time.perf_counter()
                for _ in range(steps):
                    next(it)
                pipeline.append(steps * batch_size / (time.perf_counter() - t))
            else:
                t = time.perf_counter()
                for _ in range(steps):
                    state, _ = compiled(state, batch)
                jax.block_until_ready(state)
                train.append(steps * batch_size / (time.perf_counter() - t))
    p, t = statistics.median(pipeline), statistics.median(train)
    per_round = [a / b for a, b in zip(pipeline, train)]
    return {
        "dataset": dataset, "batch_size": batch_size, "rounds": rounds, "steps_per_round": steps,
        "compile_s": step["compile_s"], "pipeline_examples_per_s": p, "examples_per_s": t,
        "step_s": batch_size / t, "ratio": p / t, "ratio_min": min(per_round), "ratio_max": max(per_round),
        "pipeline_per_round": pipeline, "train_per_round": train,
    }
