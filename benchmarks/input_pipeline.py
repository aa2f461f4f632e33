"""One process's input pipeline, timed: examples/s and resident memory (no model).

    python -m benchmarks.input_pipeline [--name av_digits] [--data_dir DIR] [--batch 256] [--steps 50] [--augment]
    python -m benchmarks.input_pipeline --worker SPEC.json    (one process of ``bench input``)

A process ``p`` of ``P`` reads its rows of each global batch of B examples
(``L = B / P`` rows, the ``p``-th block of L). Three pipelines:

* ``mmjax``: ``mmjax.data.make_iterator(..., process_index=p, process_count=P)``,
  whatever reader is in place;
* ``grain``: a Grain ``MapDataset`` over the tfds ArrayRecord data source of a
  JPEG dataset (:mod:`benchmarks.photos`): JPEG decode + random resized crop +
  flip with PIL in Grain's read threads, then batched;
* ``pil``: the same rows decoded and augmented one at a time in a plain loop
  (one thread): the reference.

The grain and pil pipelines visit epoch ``e`` in the order
``default_rng([seed, e]).permutation(N)`` (:func:`local_rows`) and seed each
example's augmentation by (seed, step, row in the global batch), so what an
example becomes does not depend on P.

:func:`run_spec` takes ``warmup`` batches (the first one timed on its own),
waits for the other processes of the measurement (a file barrier), times
``steps`` batches and reports examples/s of its own rows, the resident memory
after imports, after the first batch and at its peak (KiB; VmHWM, see
:func:`peak_rss_kib`; ``ru_maxrss`` is reported too),
and the first batch's labels, ids (when batches carry them) and per-row
fingerprints, from which the caller checks that the processes' rows are
disjoint and cover the global batch.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import resource
import time
from typing import Any, Dict, Iterator, List, Optional

import numpy as np


def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_kib() -> int:
    """Resident memory of this process now (KiB; VmRSS), or its peak where /proc is missing."""
    now = _status_kib("VmRSS")
    return peak_rss_kib() if now is None else now


def maxrss_kib() -> int:
    """``ru_maxrss`` (KiB on Linux). In a process started by fork + exec it also counts the parent's
    resident memory at the fork, which Linux carries over the exec."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_rss_kib() -> int:
    """Peak resident memory of this process's own address space (VmHWM, KiB), else ``ru_maxrss``."""
    hwm = _status_kib("VmHWM")
    return maxrss_kib() if hwm is None else hwm


def local_rows(n: int, global_batch: int, process_index: int, process_count: int, seed: int,
               steps: int) -> np.ndarray:
    """(steps, global_batch // process_count) example indices: this process's rows of each global batch."""
    per_epoch = n // global_batch
    if per_epoch == 0:
        raise ValueError(f"{n} examples are fewer than the global batch {global_batch}")
    local = global_batch // process_count
    out = np.empty((steps, local), np.int64)
    perm_epoch, perm = None, None
    for step in range(steps):
        epoch, k = divmod(step, per_epoch)
        if epoch != perm_epoch:
            perm, perm_epoch = np.random.default_rng([seed, epoch]).permutation(n), epoch
        start = k * global_batch + process_index * local
        out[step] = perm[start:start + local]
    return out


def mmjax_config(spec: Dict[str, Any]):
    """The data config a spec asks for.

    ``photos``: an image + label dataset with no entry of its own in
    ``default_config``, so the image modality options are taken from a plain
    image + label one (``cifar10``) and given the spec's size and flip.
    """
    from mmjax.data import default_config

    if spec.get("photos"):
        cfg = default_config("cifar10")
        cfg.name = spec["dataset"]
        image = cfg.modalities["image"]
        image.size = tuple(spec["image_size"])
        image.augment_flip = bool(spec.get("augment_flip", False))
    else:
        cfg = default_config(spec["dataset"])
    if spec.get("augment"):
        for mc in cfg.modalities.values():
            if mc.kind == "image":
                mc.augment_pad = 2
            elif mc.kind == "audio":
                mc.augment_gain_db, mc.augment_shift, mc.augment_noise = 6.0, 800, 0.01
        cfg.modality_dropout = {m: 0.2 for m in cfg.modalities}
    cfg.data_dir = spec.get("data_dir")
    if spec.get("backend") and "backend" in cfg:
        cfg.backend = spec["backend"]
    return cfg


def mmjax_batches(spec: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    from mmjax.data import make_iterator

    return make_iterator(mmjax_config(spec), spec.get("split", "train"), global_batch_size=spec["global_batch"],
                         seed=spec["seed"], train=True, process_index=spec["process_index"],
                         process_count=spec["process_count"])


def _photo_rows(spec: Dict[str, Any]):
    from benchmarks import photos

    src = photos.data_source(spec["source_dir"])
    rows = local_rows(len(src), spec["global_batch"], spec["process_index"], spec["process_count"],
                      spec["seed"], spec["warmup"] + spec["steps"])
    return src, rows


def _photo_example(src, rows: np.ndarray, k: int, spec: Dict[str, Any]) -> Dict[str, Any]:
    """The k-th row of this process: read, JPEG decode, random resized crop, flip."""
    from benchmarks import photos

    step, j = divmod(k, rows.shape[1])
    ex = src[int(rows[step, j])]
    rng = np.random.default_rng([spec["seed"], step, spec["process_index"] * rows.shape[1] + j])
    return {"image": photos.random_resized_crop_flip(ex["image"], rng, spec["image_size"][0]),
            "label": np.int32(ex["label"]), "id": np.int32(ex["id"])}


def grain_batches(spec: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    import grain

    src, rows = _photo_rows(spec)
    local = rows.shape[1]
    ds = grain.MapDataset.range(rows.size).map(lambda k: _photo_example(src, rows, k, spec))
    options = grain.ReadOptions(num_threads=spec["threads"], prefetch_buffer_size=2 * local)
    return iter(ds.to_iter_dataset(options).batch(local))


def pil_batches(spec: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    src, rows = _photo_rows(spec)
    for step in range(rows.shape[0]):
        exs = [_photo_example(src, rows, step * rows.shape[1] + j, spec) for j in range(rows.shape[1])]
        yield {k: np.stack([e[k] for e in exs]) for k in ("image", "label", "id")}


PIPELINES = {"mmjax": mmjax_batches, "grain": grain_batches, "pil": pil_batches}


def fingerprints(batch: Dict[str, Any]) -> List[str]:
    """Per row, a short hash of its inputs and label; images (H, W, C) are made flip-symmetric first
    (max of the image and its mirror), so a random flip does not change them."""
    inputs = batch.get("inputs", {k: v for k, v in batch.items() if k == "image"})
    n = len(next(iter(inputs.values())))
    out = []
    for i in range(n):
        h = hashlib.sha1()
        for name in sorted(inputs):
            x = np.asarray(inputs[name][i])
            if x.ndim == 3:
                x = np.maximum(x, x[:, ::-1])
            h.update(name.encode())
            h.update(np.ascontiguousarray(x).tobytes())
        if "label" in batch:
            h.update(np.asarray(batch["label"][i]).tobytes())
        out.append(h.hexdigest()[:12])
    return out


def summarize(batch: Dict[str, Any]) -> Dict[str, Any]:
    """Rows, labels, ids (where the batch has them) and fingerprints of one batch."""
    ids = next((batch[k] for k in ("id", "index", "example_id") if k in batch), None)
    labels = batch.get("label")
    return {"rows": len(fingerprints(batch)), "fingerprints": fingerprints(batch),
            "ids": None if ids is None else np.asarray(ids).ravel().tolist(),
            "labels": None if labels is None else np.asarray(labels).tolist()}


def _rows(batch: Dict[str, Any]) -> int:
    inputs = batch.get("inputs", batch)
    return int(len(next(iter(inputs.values()))))


def _barrier(spec: Dict[str, Any], timeout_s: float = 600.0) -> float:
    """Marks this process ready and waits until all ``process_count`` are; returns the seconds waited."""
    d = spec.get("barrier_dir")
    if not d:
        return 0.0
    open(os.path.join(d, f"ready.{spec['process_index']}"), "w").close()
    t = time.perf_counter()
    while len(glob.glob(os.path.join(d, "ready.*"))) < spec["process_count"]:
        if time.perf_counter() - t > timeout_s:
            break
        time.sleep(0.005)
    return time.perf_counter() - t


def run_spec(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Warm-up, barrier, ``steps`` timed batches of one pipeline in this process (see the module docstring)."""
    import PIL.Image  # noqa: F401  (decoders are imported here, not in the timed part)

    if spec["pipeline"] == "mmjax":
        import mmjax.data  # noqa: F401
    else:
        import grain  # noqa: F401
        import tensorflow_datasets  # noqa: F401
    rss_imports = rss_kib()
    t = time.perf_counter()
    it = PIPELINES[spec["pipeline"]](spec)
    first = next(it)
    first_batch_s = time.perf_counter() - t
    summary = summarize(first)
    rss_after_first = rss_kib()
    for _ in range(spec["warmup"] - 1):
        next(it)
    waited = _barrier(spec)
    rows, t, start_unix = 0, time.perf_counter(), time.time()
    for _ in range(spec["steps"]):
        rows += _rows(next(it))
    dt = time.perf_counter() - t
    peak = peak_rss_kib()
    return {
        "process_index": spec["process_index"], "process_count": spec["process_count"],
        "rows_per_batch": summary["rows"], "steps": spec["steps"], "warmup": spec["warmup"],
        "first_batch_s": first_batch_s, "barrier_wait_s": waited, "timed_s": dt, "rows_timed": rows,
        "timed_start_unix": start_unix, "timed_end_unix": start_unix + dt,
        "examples_per_s": rows / dt if dt > 0 else None,
        "rss_after_imports_kib": rss_imports, "rss_after_first_batch_kib": rss_after_first,
        "peak_rss_kib": peak, "ru_maxrss_kib": maxrss_kib(), "rss_growth_kib": peak - rss_imports,
        "first_batch": summary,
    }


def measure(name: str = "av_digits", *, batch: int = 256, steps: int = 50, data_dir=None,
            backend: Optional[str] = "tf", augment: bool = False) -> dict:
    """Steady examples/s of ``make_iterator`` on the train split in this process (P = 1).

    Returns name, num_examples (None when the reader does not say), load_s
    (open + first batch), batch_s, examples_per_s, batch, steps, backend (the
    data config's, None where the reader has no such key), augment, peak_rss_kib.
    """
    spec = {"pipeline": "mmjax", "dataset": name, "data_dir": data_dir, "backend": backend, "augment": augment,
            "global_batch": batch, "seed": 0, "process_index": 0, "process_count": 1, "warmup": 1,
            "steps": steps}
    r = run_spec(spec)
    cfg = mmjax_config(spec)
    try:
        from mmjax.data import dataset_info

        num_examples = int(dataset_info(cfg).splits["train"])
    except Exception:  # not every reader has dataset_info; the count is only reported
        num_examples = None
    return {"name": name, "num_examples": num_examples, "load_s": r["first_batch_s"],
            "batch_s": r["timed_s"] / steps, "examples_per_s": r["examples_per_s"], "batch": batch,
            "steps": steps, "backend": cfg.get("backend"), "augment": augment, "peak_rss_kib": r["peak_rss_kib"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--name", default="av_digits")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--backend", default="tf", choices=("tf", "numpy"))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--augment", action="store_true", help="image crop, audio gain/shift/noise, modality dropout")
    args = p.parse_args(argv)
    if args.worker:
        with open(args.worker) as f:
            spec = json.load(f)
        result = run_spec(spec)
        tmp = spec["out"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, spec["out"])
        return 0
    r = measure(args.name, batch=args.batch, steps=args.steps, data_dir=args.data_dir,
                backend=args.backend, augment=args.augment)
    print(f"{args.name} train ({r['num_examples']} examples, augment {args.augment}): first batch "
          f"{r['load_s']:.1f} s; {r['examples_per_s']:,.0f} examples/s ({r['batch_s'] * 1e3:.1f} ms per batch "
          f"of {args.batch}); peak RSS {r['peak_rss_kib'] / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
