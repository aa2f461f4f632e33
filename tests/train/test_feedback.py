"""What a run tells its user: start-up and compile lines, the learning rate, TensorBoard tags, config and hparams."""
import glob
import io
import json
import math
import os

import pytest

from mmjax.data import synthetic
from mmjax.train import loop
from tests.train.test_run_record import _config


def _cosine_with_warmup(step, peak, warmup, total):
    """optax.warmup_cosine_decay_schedule written out: linear 0 -> peak, then cosine to 0."""
    if step < warmup:
        return peak * step / warmup
    t = min(step - warmup, total - warmup) / (total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * t))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("feedback") / "run")
    c = _config(total_steps=6, log_every=1, eval_every=3, checkpoint_every=3, tensorboard=True)
    c.optim.warmup_steps = 2
    out = io.StringIO()
    loop.train_and_evaluate(c, wd, info_fn=lambda cfg: synthetic.info(cfg.data), console=out)
    return wd, c, out.getvalue()


def test_console_says_what_happens_before_the_first_log_line(run):
    _, _, text = run
    lines = text.splitlines()
    model = next(i for i, line in enumerate(lines) if line.startswith("model: "))
    assert "parameters, fusion concat" in lines[model] and "selecting on validation" in lines[model]
    compiling = next(i for i, line in enumerate(lines) if line.startswith("compiling the train step"))
    assert lines[compiling + 1].startswith("compiled and ran step 1 in ")
    assert model < compiling < next(i for i, line in enumerate(lines) if line.startswith("step 1/6"))


def test_learning_rate_is_logged_as_the_schedule_gives_it(run):
    wd, c, _ = run
    records = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
    lrs = {r["step"]: r["learning_rate"] for r in records if "learning_rate" in r}
    assert sorted(lrs) == [1, 2, 3, 4, 5, 6]
    for step, lr in lrs.items():  # the rate of step s's update is the schedule at count s - 1
        assert lr == pytest.approx(_cosine_with_warmup(step - 1, c.optim.learning_rate, 2, 6), rel=1e-5, abs=1e-9)


def test_tensorboard_has_prefixed_scalars_config_text_and_hparams(run):
    tf = pytest.importorskip("tensorflow")
    wd, _, _ = run
    tags, plugins = set(), set()
    for path in glob.glob(os.path.join(wd, "tensorboard", "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                tags.add(v.tag)
                if v.metadata.plugin_data.plugin_name:
                    plugins.add(v.metadata.plugin_data.plugin_name)
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "eval/accuracy", "eval/loss"} <= tags
    assert any(t.startswith("config") for t in tags) and {"text", "hparams"} <= plugins


def test_commands_use_the_persistent_compilation_cache_by_default(tmp_path):
    import subprocess
    import sys

    from tests.train.test_run_record import TINY

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "MMJAX_COMPILATION"))}
    env.update(PYTHONPATH=root, JAX_PLATFORMS="cpu", XDG_CACHE_HOME=str(tmp_path / "cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    cmd = [sys.executable, "-m", "experiments", "train", "synthetic", "--workdir", str(tmp_path / "run"), *TINY]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    # the final checkpoint is saved before its eval ranks it: Orbax's no-metrics warning is not shown
    assert "did not provide metrics" not in p.stderr, p.stderr[-2000:]
    cached = os.listdir(tmp_path / "cache" / "mmjax" / "jax")
    assert cached  # the train and eval steps were written there
    cmd[cmd.index(str(tmp_path / "run"))] = str(tmp_path / "run2")  # a fresh run: it compiles again
    p = subprocess.run(cmd, capture_output=True, text=True,
                       env=dict(env, MMJAX_COMPILATION_CACHE="off", XDG_CACHE_HOME=str(tmp_path / "other")),
                       cwd=root, timeout=300)
    assert p.returncode == 0 and "compiled and ran step 1" in p.stdout, p.stderr[-2000:]
    assert not os.path.exists(tmp_path / "other" / "mmjax")


def test_eval_plots_carry_their_run_and_reach_tensorboard(run):
    tf = pytest.importorskip("tensorflow")
    from experiments.commands import eval as eval_cmd

    wd, c, _ = run
    out = eval_cmd.evaluate(c, wd, noise_levels=(0.0, 1.0), info_fn=lambda cfg: synthetic.info(cfg.data),
                            console=None)
    assert out["eval_split"] == "test" and os.path.exists(os.path.join(wd, "eval", "robustness.png"))
    images = set()
    for path in glob.glob(os.path.join(wd, "tensorboard", "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            images |= {v.tag for v in event.summary.value if v.HasField("image")}
    assert images == {"eval/confusion_matrix", "eval/roc", "eval/robustness"}
