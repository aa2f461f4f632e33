"""The fusion benchmark runs end to end in a tiny configuration and writes a
well-formed report. No timing is asserted (the machine is shared)."""
import argparse
import dataclasses
import json
import math
import os

import pytest

import mmjax.fusion as fusion
from benchmarks import common
from benchmarks import fusion_throughput as ft

torch = pytest.importorskip("torch", reason="PyTorch is the benchmark-only extra (pip install torch==2.13.0)")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bench"))
    ft.run(out, grid=ft.TINY, log=lambda s: None)
    with open(os.path.join(out, "fusion.json")) as f:
        doc = json.load(f)
    return out, doc


@pytest.fixture(scope="module")
def scaling_report(tmp_path_factory):
    """tensor and low_rank only, with 2 and 3 modalities: the scaling and speed-up summaries."""
    out = str(tmp_path_factory.mktemp("bench_scaling"))
    grid = dataclasses.replace(ft.TINY, scaling_modalities=(2, 3), batches=())
    return ft.run(out, grid=grid, blocks=["low_rank", "tensor"], plots=True, log=lambda s: None)


def test_json_is_complete_and_every_block_present(report):
    out, doc = report
    assert doc["blocks"] == fusion.names()
    for key in ("date", "device_kind", "jax", "torch", "cpu_count"):
        assert doc["environment"][key] is not None, key
    assert doc["peak"]["peak_flops_per_s"] > 0
    assert doc["peak"]["peak_flops_per_s"] == max(doc["peak"]["jax_flops_per_s"], doc["peak"]["torch_flops_per_s"])
    batch_rows = {r["block"]: r for r in doc["results"] if r["group"] == "batch"}
    assert set(batch_rows) == set(fusion.names())
    for name, r in batch_rows.items():
        assert "error" not in r, (name, r.get("error"))
        j = r["jax"]
        for phase in ("fwd", "train"):
            assert j[phase]["examples_per_s"] > 0 and math.isfinite(j[phase]["examples_per_s"])
            assert j[phase]["compile_s"] > 0
            assert j[phase]["memory"]["total"] == sum(j[phase]["memory"][k] for k in ("temp", "argument", "output"))
            assert j[phase]["xla_flops"] is None or j[phase]["xla_flops"] >= 0
        # The counted parameters are what the cost model predicts.
        assert r["analytic"]["params"] == r["params"], name
        assert r["analytic"]["flops_per_example"] > 0
        # The reference ran on the same weights and inputs and agrees.
        assert "error" not in r["torch"], (name, r["torch"])
        assert r["torch"]["max_rel_diff_vs_jax"] < 1e-4, name
        assert r["ratio"]["train_eager"] > 0 and r["ratio"]["fwd_compile"] is None
    s = doc["summary"]
    assert {"targets", "low_rank_over_tensor", "growth", "lmf_paper_speedup"} <= set(s)
    assert len(s["targets"]["met"]) + len(s["targets"]["missed"]) > 0


def test_scaling_summary(scaling_report):
    doc = scaling_report
    mods = {(r["block"], r["num_modalities"]): r for r in doc["results"] if r["group"] == "modalities"}
    # TFN's weight grows as the product of (d+1), LMF's linearly: at d=4, 2 -> 3 modalities
    # multiplies tensor's FLOPs by about 5 and low_rank's by about 1.5.
    t2, t3 = mods[("tensor", 2)]["params"], mods[("tensor", 3)]["params"]
    # (+ 2 * 4: the LayerNorm over the output, tensor's default normalize=True)
    assert t3 / t2 == pytest.approx((5**3 * 4 + 4 + 8) / (5**2 * 4 + 4 + 8))
    growth = doc["summary"]["growth"]
    assert growth["tensor"]["flops_per_added_modality"] > 4
    assert growth["low_rank"]["flops_per_added_modality"] < 2
    speedups = doc["summary"]["low_rank_over_tensor"]
    assert [4, 4, 4] in [s["dims"] for s in speedups]
    assert all(s["train"] > 0 and s["params_ratio"] > 0 for s in speedups)


def test_markdown_and_plots_written(report):
    out, doc = report
    md = open(os.path.join(out, "fusion.md")).read()
    for name in fusion.names():
        assert f"| {name} |" in md
    # The "Blocks" table: one row per block with its source and the cost model's numbers.
    blocks = md.split("## Blocks", 1)[1].split("\n## ", 1)[0]
    rows = {line.split(" | ")[0][2:]: line for line in blocks.splitlines() if line.startswith("| ") and " | " in line}
    for name in fusion.names():
        (r,) = [x for x in doc["results"] if x["block"] == name and x["group"] == "batch"]
        assert ft.SPECS[name].source in rows[name], name
        assert f"| {r['params']:,} / {r['analytic']['params']:,} |" in rows[name], name
    assert "## Targets" in md and "LMF paper" in md
    for png in ("throughput.png", "scaling.png"):
        with open(os.path.join(out, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_every_block_has_a_spec_with_its_source():
    assert set(ft.SPECS) == set(fusion.names())
    assert all(spec.source for spec in ft.SPECS.values())


def test_grids_cover_every_group():
    cases = ft.build_cases(fusion.names(), ft.QUICK)
    groups = {(c.block, c.group) for c in cases}
    # nl_gate takes one query and one gating modality: no case gives it more.
    assert max(len(c.dims) for c in cases if c.block == "nl_gate") == 2
    assert max(len(c.dims) for c in cases if c.block == "concat") == max(ft.QUICK.scaling_modalities)
    for name in fusion.names():
        assert (name, "batch") in groups and (name, "modalities") in groups and (name, "dims") in groups
    for name in ft.MATMUL_HEAVY:
        assert (name, "large") in groups
    for c in cases:
        if c.block == "tensor":  # the product-of-dims weight stays within the cap
            assert math.prod(d + 1 for d in c.dims) * c.out_dim <= ft.SPECS["tensor"].max_product or c.group == "large"
    assert {c.group for c in cases if ft.spec_for(c.block).tokens} >= {"tokens"}


def test_xla_flops_accepts_dict_and_list():
    class Dict_:
        def cost_analysis(self):
            return {"flops": 12.0}

    class List_:
        def cost_analysis(self):
            return [{"flops": 5.0}, {"flops": 7.0}]

    class Broken:
        def cost_analysis(self):
            raise NotImplementedError

    assert common.xla_flops(Dict_()) == 12.0
    assert common.xla_flops(List_()) == 12.0
    assert common.xla_flops(Broken()) is None


def test_time_calls_counts_and_syncs():
    calls, synced = [], []
    t = common.time_calls(lambda: calls.append(1) or len(calls), sync=synced.append, repeats=3, min_time=0.0)
    # two warm-up calls, then `repeats` repeats of `iters` calls, each repeat synced once
    assert len(calls) == 2 + 3 * t.iters and len(synced) == 2 + 3
    assert 0 < t.min_s <= t.median_s


def test_bad_requests_fail_clearly(tmp_path):
    with pytest.raises(common.BenchmarkConfigError, match="unknown fusion block"):
        ft.run(str(tmp_path), blocks=["concat", "no_such_block"], grid=ft.TINY)
    from experiments.commands import bench
    from experiments.errors import UserError

    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "fusion", "--quick", "--out", str(tmp_path), "--blocks", "tensr"])
    with pytest.raises(UserError, match="tensr"):
        bench.run(args)
    args = parser.parse_args(["bench", "fusion", "--blocks", ","])
    with pytest.raises(UserError, match="at least one"):
        bench.run(args)


def test_time_interleaved_rotates_rounds_and_runs_hooks():
    log = []

    def contender(name):
        return common.Contender(call=lambda: log.append(("call", name)) or name,
                                sync=lambda out: log.append(("sync", out)),
                                before=lambda: log.append(("before", name)))

    t = common.time_interleaved({"a": contender("a"), "b": contender("b"), "c": contender("c")},
                                repeats=4, min_time=0.0)
    assert set(t) == {"a", "b", "c"} and all(x.repeats == 4 and x.iters == 1 for x in t.values())
    assert all(0 < x.min_s <= x.median_s for x in t.values())
    # Calibration first (before, warm-up, timed call per contender), then rounds whose order rotates.
    timed = [e for e in log[3 * 5:] if e[0] == "before"]
    assert [n for _, n in timed] == list("abc" "bca" "cab" "abc")
    assert log.count(("sync", "a")) == 2 + 4  # warm-up, calibration, one per round
    with pytest.raises(common.BenchmarkConfigError, match="at least one contender"):
        common.time_interleaved({}, repeats=1)


def test_bfloat16_run_is_mixed_precision_and_agrees_with_torch_autocast(tmp_path):
    grid = dataclasses.replace(ft.TINY, dtype="bfloat16")
    doc = ft.run(str(tmp_path), grid=grid, blocks=["concat", "low_rank", "cross_attention"], plots=False,
                 log=lambda s: None)
    assert doc["grid"]["dtype"] == "bfloat16" and doc["peak"]["dtype"] == "bfloat16"
    for r in doc["results"]:
        assert "error" not in r, r.get("error")
        assert r["torch"]["device"] == ft.torch_device()
        # Both sides compute in bf16 (8 bits of mantissa): agreement to bf16 precision, not f32.
        assert r["torch"]["max_rel_diff_vs_jax"] < 0.05, r["block"]
        assert r["jax"]["train"]["examples_per_s"] > 0
    assert "compute dtype bfloat16" in (tmp_path / "fusion.md").read_text()
    with pytest.raises(common.BenchmarkConfigError, match="dtype must be one of"):
        ft.run(str(tmp_path), grid=dataclasses.replace(ft.TINY, dtype="float8"), blocks=["concat"],
               log=lambda s: None)


def test_large_cases_take_the_share_of_a_peak_timed_beside_them(tmp_path):
    grid = dataclasses.replace(ft.TINY, large=True, batches=())
    doc = ft.run(str(tmp_path), grid=grid, blocks=["concat"], plots=False, log=lambda s: None)
    (row,) = [r for r in doc["results"] if r["group"] == "large"]
    for phase in ("fwd", "train"):
        j = row["jax"][phase]
        assert j["peak_flops_per_s"] > 0
        assert j["share_of_peak"] == pytest.approx(j["flops_per_s"] / j["peak_flops_per_s"])
        assert j["peak_flops_per_s"] == max(j["matmul_flops_per_s"].values())
        assert set(j["matmul_flops_per_s"]) == {"jax", "torch"}
    assert [p["block"] for p in doc["summary"]["peak_shares"]] == ["concat", "concat"]
    # Large sizes count towards the "at least as fast as PyTorch" target too.
    listed = doc["summary"]["targets"]["missed"] + doc["summary"]["targets"]["met"]
    assert any("(large)" in m for m in listed) or all(v >= 1.0 for v in row["ratio"].values() if v)
    assert "square 128² matmul in jax and in PyTorch" in (tmp_path / "fusion.md").read_text()
