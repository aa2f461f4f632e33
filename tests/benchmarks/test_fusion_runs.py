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
