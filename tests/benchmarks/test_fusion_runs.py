"""Median and range of mmjax / PyTorch ratios across bench fusion runs."""
import json

import pytest

from benchmarks import fusion_runs


def _doc(ratios):
    rows = [{"block": "concat", "group": "batch", "batch": 8, "token_length": None,
             "ratio": {"fwd_eager": f, "train_eager": t, "fwd_compile": None, "train_compile": None}}
            for f, t in ratios]
    rows.append({"block": "concat", "group": "modalities", "batch": 64, "token_length": None})  # no PyTorch run
    rows.append({"block": "tensor", "group": "batch", "batch": 8, "error": "boom"})  # failed case
    return {"benchmark": "fusion_throughput", "results": rows}


def test_median_and_range_over_runs(tmp_path, capsys):
    docs = [_doc([(1.0, 2.0)]), _doc([(3.0, 1.0)]), _doc([(2.0, None)])]
    (entry,) = fusion_runs.ratios_across_runs(docs)
    assert (entry["block"], entry["group"], entry["batch"]) == ("concat", "batch", 8)
    assert entry["fwd"] == [1.0, 3.0, 2.0] and entry["train"] == [2.0, 1.0]
    assert "| concat | batch | 8 |  | 2.00 (1.00-3.00) | 1.50 (1.00-2.00) |" in fusion_runs.render(docs)
    paths = []
    for i, d in enumerate(docs):
        paths.append(str(tmp_path / f"run{i}.json"))
        with open(paths[-1], "w") as f:
            json.dump(d, f)
    assert fusion_runs.main(paths) == 0
    assert "over 3 runs" in capsys.readouterr().out
    with open(tmp_path / "train.json", "w") as f:
        json.dump({"benchmark": "train", "results": []}, f)
    with pytest.raises(SystemExit, match="not a bench fusion result"):
        fusion_runs.main([str(tmp_path / "train.json")])


def test_repeated_runs_write_each_run_and_the_table(tmp_path):
    made = []

    def run_once(directory, plots):
        made.append((directory, plots))
        return _doc([(float(len(made)), 1.0)])

    said = []
    path = fusion_runs.run_repeated(str(tmp_path), 3, run_once, log=said.append)
    assert made == [(str(tmp_path), True), (str(tmp_path / "repeats" / "run-2"), False),
                    (str(tmp_path / "repeats" / "run-3"), False)]
    with open(path) as f:
        table = f.read()
    assert path == str(tmp_path / "fusion_runs.md") and "over 3 runs" in table
    assert "| concat | batch | 8 |  | 2.00 (1.00-3.00) | 1.00 (1.00-1.00) |" in table
    assert said[0] == "== run 1/3" and said[-1].startswith("wrote ")
    with pytest.raises(ValueError, match="--runs must be >= 1"):
        fusion_runs.run_repeated(str(tmp_path), 0, run_once)


def test_cli_runs_the_real_grid_twice(tmp_path):
    from experiments.__main__ import main

    out = tmp_path / "bench"
    assert main(["bench", "fusion", "--quick", "--blocks", "sum", "--no-plots", "--runs", "2", "--out", str(out)]) == 0
    docs = [json.loads((out / "fusion.json").read_text()),
            json.loads((out / "repeats" / "run-2" / "fusion.json").read_text())]
    assert all(d["blocks"] == ["sum"] for d in docs)
    table = (out / "fusion_runs.md").read_text()
    assert table == fusion_runs.render(docs) and "| sum | batch | 512 |" in table
