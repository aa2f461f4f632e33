"""The run record (WORKDIR/config.json), the resume diff, and model selection on a validation split."""
import json
import os

import pytest

from experiments.__main__ import main
from experiments.configs import synthetic as synthetic_config
from mmjax.data import synthetic
from mmjax.train import builder, evaluation, loop, run_record, selection

TINY = ["--config.total_steps=4", "--config.log_every=2", "--config.eval_every=0", "--config.checkpoint_every=0",
        "--config.batch_size=8", "--config.data.eval_examples=16", "--config.parallel.mode=single",
        "--config.tensorboard=false", "--config.model.encoders.a.features=(8,)",
        "--config.model.encoders.b.features=(8,)", "--config.model.head_hidden=()",
        "--config.model.fusion_config.out_dim=8"]


def _config(**over):
    c = synthetic_config.get_config()
    c.model.encoders = {"a": {"name": "mlp", "features": (8,)}, "b": {"name": "mlp", "features": (8,)}}
    c.model.fusion_config = {"out_dim": 8}
    c.model.head_hidden = ()
    c.total_steps, c.batch_size, c.log_every, c.eval_every, c.checkpoint_every = 4, 8, 2, 2, 2
    c.data.eval_examples = 16
    c.parallel.mode = "single"
    c.optim.learning_rate = 1e-3
    c.tensorboard = False
    for k, v in over.items():
        c[k] = v
    return c


def _info(config):
    return synthetic.info(config.data)


def test_record_round_trips_the_config(tmp_path):
    c = _config()
    run_record.write(str(tmp_path), c, {"num_classes": 3, "class_names": ["x", "y", "z"], "bad_examples": {}},
                     experiment="synthetic")
    back = run_record.read(str(tmp_path))
    assert back.experiment == "synthetic" and back.data_info == {"num_classes": 3, "class_names": ["x", "y", "z"]}
    assert back.config.model.encoders.a.features == (8,)  # tuples come back as tuples
    assert run_record.differences(c, back.config) == []
    assert run_record.differences(c, _config(seed=3)) == ["seed: 0 -> 3"]


def test_resume_with_a_changed_setting_is_refused_then_allowed(tmp_path, capsys):
    wd = str(tmp_path / "run")
    loop.train_and_evaluate(_config(), wd, info_fn=_info, console=None, stop_at=2)
    assert json.load(open(os.path.join(wd, "config.json")))["config"]["optim"]["learning_rate"] == 1e-3
    changed = _config()
    changed.optim.learning_rate = 0.05
    with pytest.raises(run_record.ConfigChangedError, match=r"optim\.learning_rate: 0\.001 -> 0\.05"):
        loop.train_and_evaluate(changed, wd, info_fn=_info, console=None)
    # A reporting setting changes freely; the change is printed.
    out = loop.train_and_evaluate(_config(log_every=1), wd, info_fn=_info, stop_at=3)
    assert out["stopped_at"] == 3 and "log_every: 2 -> 1" in capsys.readouterr().out
    loop.train_and_evaluate(changed, wd, info_fn=_info, allow_config_change=True)
    assert "optim.learning_rate: 0.001 -> 0.05" in capsys.readouterr().out
    assert run_record.read(wd).config.optim.learning_rate == 0.05  # the record follows the allowed change


def test_cli_resume_diff_and_eval_without_flags(tmp_path, capsys):
    wd = str(tmp_path / "cli")
    assert main(["train", "synthetic", "--workdir", wd, *TINY]) == 0
    capsys.readouterr()
    assert main(["train", "--workdir", wd, "--config.optim.learning_rate=0.05"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.learning_rate: 0.003 -> 0.05" in err[0] and "--allow_config_change" in err[0]
    assert main(["eval", "av_digits", "--workdir", wd]) == 2
    assert "trained with experiment 'synthetic'" in capsys.readouterr().err
    assert main(["eval", "--workdir", str(tmp_path / "empty")]) == 2
    assert "holds no run" in capsys.readouterr().err


def test_selection_holds_out_a_slice_of_train_when_there_is_no_validation_split():
    info = {"name": "stamps", "splits": {"train": 100, "test": 20}}
    c, note = selection.resolve(_config(), info)
    assert (c.train_split, c.eval_split) == ("train[:90]", "train[90:]") and "no 'validation' split" in note
    c, _ = selection.resolve(_config(train_split="train[:10%]"), info)
    assert (c.train_split, c.eval_split) == ("train[:10]", "train[90:]")
    c, _ = selection.resolve(_config(), {"splits": {"train": 4, "test": 2}})
    assert (c.train_split, c.eval_split) == ("train[:3]", "train[3:]")  # one example at least
    with pytest.raises(selection.SelectionSplitError, match="too few"):
        selection.resolve(_config(), {"splits": {"train": 1, "test": 2}})
    c, note = selection.resolve(_config(), {"splits": {"train": 1, "validation": 1, "test": 1}})
    assert (c.train_split, c.eval_split, note) == ("train", "validation", None)
    with pytest.raises(selection.SelectionSplitError, match="train_split 'train\\[95%:\\]'"):
        selection.resolve(_config(train_split="train[95%:]"), info)


def test_best_checkpoint_selected_on_validation_reports_test_once(tmp_path):
    seen = []

    def data_fn(config, split, *, global_batch_size, seed, train, start_step=0):
        seen.append(split)
        name = "train" if train else split
        return synthetic.make_iterator(config.data, name, global_batch_size=global_batch_size, seed=seed,
                                       train=train, start_step=start_step)

    wd = str(tmp_path / "sel")
    res = loop.train_and_evaluate(_config(), wd, data_fn=data_fn, info_fn=_info, console=None)
    assert seen.count("test") == 1 and seen.count("validation") == 2  # evals at steps 2 and 4
    assert res["eval_split"] == "validation" and res["test"]["split"] == "test"
    ckpt = builder.open_checkpoints(_config(), wd, for_eval=True)
    best = ckpt.best_step()
    ckpt.close()
    assert res["test"]["step"] == best
    again = evaluation.evaluate(_config(), wd, data_fn=data_fn, info_fn=_info, console=None)
    assert again["step"] == best and again["accuracy"] == pytest.approx(res["test"]["accuracy"])


def test_a_run_recorded_with_the_explicit_task_metric_resumes_under_the_empty_default(tmp_path, capsys):
    wd = str(tmp_path / "old")
    old = _config()
    old.checkpoint.best_metric, old.checkpoint.best_mode = "accuracy", "max"  # what base.py used to say
    loop.train_and_evaluate(old, wd, info_fn=_info, console=None, stop_at=2)
    assert run_record.read(wd).config.checkpoint.best_metric == "accuracy"
    new = _config()
    assert (new.checkpoint.best_metric, new.checkpoint.best_mode) == ("", "")
    out = loop.train_and_evaluate(new, wd, info_fn=_info)
    assert out["step"] == 4 and "config changes" not in capsys.readouterr().out
    # Another metric than the task's is a real change.
    with pytest.raises(run_record.ConfigChangedError, match=r"checkpoint\.best_metric: 'accuracy' -> 'loss'"):
        loop.train_and_evaluate(_config(checkpoint={"best_metric": "loss"}), wd, info_fn=_info, console=None)


def test_a_fresh_record_names_the_ranking_in_effect_and_a_record_without_one_resumes(tmp_path):
    wd = str(tmp_path / "new")
    loop.train_and_evaluate(_config(), wd, info_fn=_info, console=None, stop_at=2)
    saved = run_record.read(wd).config.checkpoint
    assert (saved.best_metric, saved.best_mode) == ("accuracy", "max")
    # A library user's config without a checkpoint section, recorded before the ranking was written in.
    bare = _config()
    del bare["checkpoint"]
    run_record.write(wd, bare, _info(bare))
    loop.train_and_evaluate(bare, wd, info_fn=_info, console=None)
    assert run_record.read(wd).config.get("checkpoint") is None  # no difference: the record stays as it was


def _sliced_data_fn(seen):
    """Synthetic batches for any slice of a split ("train[:36]" reads "train"), the names asked for in ``seen``."""
    def data_fn(config, split, *, global_batch_size, seed, train, start_step=0):
        seen.append(split)
        return synthetic.make_iterator(config.data, selection._base(split), global_batch_size=global_batch_size,
                                       seed=seed, train=train, start_step=start_step)
    return data_fn


@pytest.mark.parametrize("splits,test", [({"train": 40, "test": 16}, "test"), ({"train": 40}, None)])
def test_a_config_without_split_keys_selects_on_a_held_out_slice(tmp_path, capsys, splits, test):
    c = _config()
    for key in ("eval_split", "test_split", "train_split"):
        del c[key]  # a library user's config: the defaults (validation / test / train) apply
    seen = []
    res = loop.train_and_evaluate(c, str(tmp_path / "run"), data_fn=_sliced_data_fn(seen),
                                  info_fn=lambda cfg: dict(_info(cfg), name="two_splits", splits=splits))
    # 10 % of 40 train examples held out: the last 4 select the model, the first 36 train it.
    assert res["eval_split"] == "train[36:]" and seen.count("train[36:]") == 2 and "train[:36]" in seen
    assert (res.get("test") or {}).get("split") == test and seen.count("test") == (1 if test else 0)
    out = capsys.readouterr().out
    assert "two_splits has no 'validation' split" in out
    assert ("two_splits has no 'test' split: no test evaluation" in out) == (test is None)
