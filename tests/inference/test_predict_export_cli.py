"""``python -m experiments predict`` / ``export`` on the tiny run (conftest.py) and the SYNTHETIC
experiment; the exported artifact is run in a process that imports neither mmjax nor flax."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mmjax
from experiments.reports import analysis

sys.path.insert(0, os.path.dirname(__file__))
import _tiny_run as tr  # noqa: E402


def test_cli_predict_prints_names_and_json(run_dir, loaded, tmp_path, capsys):
    from experiments.__main__ import main

    np.save(tmp_path / "v.npy", np.array([0.5, -1.0, 2.0], np.float32))
    args = ["predict", "--workdir", run_dir, f"v={tmp_path / 'v.npy'}", "text=blue sky"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    want = loaded.predict({"v": np.array([0.5, -1.0, 2.0], np.float32), "text": "blue sky"})[0]
    assert [line.split()[0] for line in lines] == [tr.CLASSES[i] for i in np.argsort(-want, kind="stable")]
    assert float(lines[0].split()[1]) == pytest.approx(want.max(), abs=1e-4)
    assert main(args + ["--json", "--top_k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == 3 and out["class_names"] == tr.CLASSES and len(out["predictions"][0]["top"]) == 2
    np.testing.assert_allclose([out["predictions"][0]["probabilities"][n] for n in tr.CLASSES], want, atol=1e-6)
    assert main(["predict", "--workdir", run_dir, "sound=x.wav"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown modality 'sound'" in err[0]


CONSUMER = textwrap.dedent("""
    import json, sys
    import jax, numpy as np

    path, data = sys.argv[1], sys.argv[2]
    doc = json.load(open(path + ".json"))
    exp = jax.export.deserialize(bytearray(open(path, "rb").read()))
    arrays = np.load(data)
    out = {}
    for size in ("2", "5"):
        batch = {}
        for d in doc["inputs"]:
            batch.setdefault(d["key"][0], {})[d["key"][1]] = arrays[size + "/" + "/".join(d["key"])]
        out[size] = np.asarray(exp.call(batch))
    np.savez(data + ".out.npz", **out)
    assert not [m for m in sys.modules if m.split(".")[0] in ("mmjax", "flax", "experiments")]
    print("consumer ok", doc["class_names"])
""")


def test_export_runs_without_mmjax_at_two_batch_sizes(run_dir, loaded, tmp_path, capsys):
    from experiments.__main__ import main

    path = str(tmp_path / "model.jaxexport")
    assert main(["export", "--workdir", run_dir, "--out", path]) == 0
    assert "to " + path in capsys.readouterr().out
    doc = json.load(open(path + ".json"))
    assert doc["class_names"] == tr.CLASSES and doc["output"]["shape"] == ["b", 3]
    assert doc["preprocessing"]["image"]["mean"] == list(tr.NORMS["image"][0])
    assert doc["preprocessing"]["audio"]["sample_rate"] == tr.RATE
    by_key = {"/".join(d["key"]): d for d in doc["inputs"]}
    assert by_key["inputs/image"]["shape"] == ["b", tr.H, tr.W, tr.C] and by_key["inputs/image"]["dtype"] == "uint8"
    assert by_key["token_mask/text"]["mask"] and by_key["modality_mask/v"]["shape"] == ["b"]
    assert "token_mask/v" not in by_key
    arrays, want = {}, {}
    for n in (2, 5):
        batch = tr.batch(np.random.default_rng(n), n)
        raw = {"image": batch["inputs"]["image"], "v": batch["inputs"]["v"],
               "text": [tr.decode(ids) for ids in batch["inputs"]["text"]]}  # audio left out: masked off
        want[n] = loaded.predict(raw)
        for key, x in _flat(loaded.preprocess(raw, normalize=False)):
            arrays[f"{n}/{key}"] = x
    data = str(tmp_path / "batches.npz")
    np.savez(data, **arrays)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", CONSUMER, path, data], capture_output=True, text=True, timeout=120,
                         cwd=str(tmp_path), env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    got = np.load(data + ".out.npz")
    for n in (2, 5):
        np.testing.assert_allclose(got[str(n)], want[n], atol=1e-5)


def _flat(batch):
    for group, d in batch.items():
        for m, x in d.items():
            yield f"{group}/{m}", x


def test_the_synthetic_experiment_predicts_as_it_evaluates(tmp_path, capsys):
    """The SYNTHETIC experiment's record (vector modalities named by ``dims``), trained by the CLI."""
    from experiments.__main__ import main
    from mmjax.data import synthetic

    wd = str(tmp_path / "synthetic")
    tiny = ["--config.total_steps=3", "--config.eval_every=0", "--config.checkpoint_every=0",
            "--config.batch_size=8", "--config.data.eval_examples=8", "--config.parallel.mode=single",
            "--config.tensorboard=false", "--config.model.head_hidden=()"]
    assert main(["train", "synthetic", "--workdir", wd, *tiny]) == 0
    model = mmjax.load(wd, "latest")
    assert model.modalities == ("a", "b") and model.class_names == ["0", "1", "2"]
    batch = next(synthetic.make_iterator(model.config.data, "test", global_batch_size=8, seed=0, train=False))
    want = tr.eval_path_probs(wd, analysis.complete_masks(batch), "latest")
    np.testing.assert_allclose(model.predict(batch["inputs"]), want, atol=1e-5)
    capsys.readouterr()
    a, b = batch["inputs"]["a"][0], batch["inputs"]["b"][0]
    assert main(["predict", "--workdir", wd, "--latest", "--json", "a=" + ",".join(map(str, a)),
                 "b=" + ",".join(map(str, b))]) == 0
    out = json.loads(capsys.readouterr().out)["predictions"][0]["probabilities"]
    np.testing.assert_allclose([out[n] for n in model.class_names], want[0], atol=1e-5)
