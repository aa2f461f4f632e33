"""``bench input`` on av_digits/tiny and a 64-example JPEG dataset with P = 1, 2 real processes:
the JSON and Markdown it writes, rows disjoint between processes and covering the global batch,
positive numbers (no timing assertions); and the pure helpers it is made of."""
import json

import numpy as np
import pytest

from benchmarks import input_checks, input_pipeline


@pytest.fixture(scope="module")
def tiny_run(tiny_dir, tmp_path_factory):  # noqa: F811
    pytest.importorskip("grain")
    pytest.importorskip("skimage")
    from benchmarks import input_bench as ib

    out = tmp_path_factory.mktemp("bench_input")
    doc = ib.run(str(out), plan=ib.TINY, data_dir=tiny_dir, log=None)
    return out, doc


def _check_runs(sweep, procs=(1, 2), global_batch=8, by=None):
    assert [r["P"] for r in sweep["runs"]] == list(procs)
    for r in sweep["runs"]:
        assert r["error"] is None, r["error"]
        assert [p["process_index"] for p in r["processes"]] == list(range(r["P"]))
        for p in r["processes"]:
            assert p["rows_per_batch"] == global_batch // r["P"]
            assert p["examples_per_s"] > 0 and p["timed_s"] > 0 and p["first_batch_s"] > 0
            assert p["peak_rss_kib"] > 0 and p["rss_after_imports_kib"] > 0 and p["rss_growth_kib"] >= 0
        check = r["rows_check"]
        assert check["rows"] == [global_batch // r["P"]] * r["P"]
        assert check["disjoint"] is True and check["covers_global_batch"] is True, check
        if by:
            assert check["by"] == by
        assert r["summary"]["host_examples_per_s"] > 0


def test_writes_json_and_markdown(tiny_run):
    out, doc = tiny_run
    with open(out / "input.json") as f:
        loaded = json.load(f)
    assert loaded["benchmark"] == "input" and loaded["plan"]["procs"] == [1, 2]
    assert loaded["av_digits_train_step"] == {"skipped": "disabled by the caller"}
    assert {"av_digits", "photos", "targets", "environment", "command"} <= set(loaded)
    assert [b["num_examples"] for b in loaded["photos"]["builds"]] == [64]
    assert [s["spec"]["pipeline"] for s in loaded["photos"]["sweeps"]] == ["mmjax", "grain", "pil"]
    md = (out / "input.md").read_text()
    assert doc["command"] in md and "| P | rows/process |" in md and "## Targets" in md


def test_av_digits_rows_are_disjoint_and_cover_the_global_batch(tiny_run):
    _, doc = tiny_run
    _check_runs(doc["av_digits"])
    assert doc["av_digits"]["prepare"]["error"] is None


def test_grain_and_pil_rows_by_example_id(tiny_run):
    _, doc = tiny_run
    grain, pil = doc["photos"]["sweeps"][1:]
    _check_runs(grain, by="id")
    _check_runs(pil, procs=(1,), by="id")
    whole = input_pipeline.local_rows(64, 8, 0, 1, 0, 1)[0].tolist()
    ids = [p["first_batch"]["ids"] for p in grain["runs"][1]["processes"]]
    assert ids == [whole[:4], whole[4:]]
    assert doc["targets"]["memory_flat_in_P"] and doc["targets"]["rows_disjoint"] is True


def test_make_iterator_on_the_jpeg_dataset(tiny_run):
    _, doc = tiny_run
    sweep = doc["photos"]["sweeps"][0]
    error = sweep["runs"][0]["error"]
    if error and "ArrayRecord" in error:
        pytest.skip(f"the reader in place does not read ArrayRecord datasets: {error}")
    _check_runs(sweep)


def test_local_rows_partition_each_global_batch():
    whole = input_pipeline.local_rows(50, 12, 0, 1, seed=3, steps=7)
    parts = [input_pipeline.local_rows(50, 12, p, 4, seed=3, steps=7) for p in range(4)]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)
    assert all(len(set(row)) == 12 for row in whole)  # no example twice within a global batch
    with pytest.raises(ValueError, match="fewer than the global batch"):
        input_pipeline.local_rows(5, 8, 0, 1, 0, 1)


def test_rows_check_finds_overlap_and_gaps():
    def run(*id_lists):
        return {"P": len(id_lists), "error": None, "processes": [
            {"first_batch": {"ids": ids, "fingerprints": [str(i) for i in ids], "labels": None}} for ids in id_lists]}

    assert input_checks.rows_check(run([0, 1], [2, 3]), None, [0, 1, 2, 3])["covers_global_batch"] is True
    overlap = input_checks.rows_check(run([0, 1], [1, 3]), None, [0, 1, 2, 3])
    assert overlap["disjoint"] is False and overlap["covers_global_batch"] is False
    reference = run([0, 1, 2, 3])
    for p in reference["processes"]:
        p["first_batch"]["ids"] = None
    gap = run([0, 1], [2, 9])
    for p in gap["processes"]:
        p["first_batch"]["ids"] = None
    check = input_checks.rows_check(gap, reference)
    assert check["by"] == "fingerprint" and check["disjoint"] is True and check["covers_global_batch"] is False
    assert input_checks.rows_check({"error": "boom", "processes": []}, None) is None


def test_fingerprints_ignore_a_horizontal_flip():
    rng = np.random.default_rng(0)
    x = rng.random((3, 4, 5, 2)).astype(np.float32)
    flipped = x.copy()
    flipped[1] = x[1, :, ::-1]
    a = input_pipeline.fingerprints({"inputs": {"image": x}, "label": np.arange(3)})
    b = input_pipeline.fingerprints({"inputs": {"image": flipped}, "label": np.arange(3)})
    assert a == b and len(set(a)) == 3


def test_random_resized_crop_flip_is_deterministic():
    pytest.importorskip("skimage")
    from benchmarks import photos

    photo = photos.source_photos()["astronaut"]
    jpeg = photos.make_example(photo, np.random.default_rng(1))
    assert jpeg != photos.make_example(photo, np.random.default_rng(2))
    a = photos.random_resized_crop_flip(jpeg, np.random.default_rng(5))
    b = photos.random_resized_crop_flip(jpeg, np.random.default_rng(5))
    assert a.shape == (224, 224, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_single_process_measure_keeps_the_train_bench_keys(tiny_dir):  # noqa: F811
    r = input_pipeline.measure("av_digits/tiny", batch=8, steps=2, data_dir=tiny_dir)
    for key in ("name", "num_examples", "load_s", "batch_s", "examples_per_s", "batch", "steps", "backend", "augment"):
        assert key in r
    assert r["examples_per_s"] > 0 and r["batch"] == 8


def test_host_rate_spans_all_timed_windows():
    def proc(start, end, rows):
        return {"rows_per_batch": 4, "examples_per_s": rows / (end - start), "peak_rss_kib": 2048,
                "rss_after_imports_kib": 1024, "rss_growth_kib": 1024, "first_batch_s": 0.1,
                "timed_start_unix": start, "timed_end_unix": end, "rows_timed": rows}

    s = input_checks.summarize_run({"error": None, "processes": [proc(0.0, 1.0, 100), proc(0.5, 2.0, 100)]})
    assert s["host_examples_per_s"] == pytest.approx(100.0)  # 200 rows from t=0 to t=2
    assert s["sum_of_process_examples_per_s"] == pytest.approx(100 + 100 / 1.5)
    assert s["peak_rss_mib_mean"] == 2.0 and input_checks.summarize_run({"error": "x", "processes": []}) == {}
