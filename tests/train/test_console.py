"""The default console is sys.stdout as it is when writing starts, not as it was at import."""
import contextlib
import io
import json

from mmjax.train import logging as log_lib


def test_default_console_follows_a_replaced_stdout(tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # replaces sys.stdout after mmjax.train.logging was imported
        writer = log_lib.MetricWriter(str(tmp_path), tensorboard=False)
        assert writer.console is out
        assert log_lib.resolve_console(log_lib.STDOUT) is out
    assert log_lib.resolve_console(None) is None
    silent = log_lib.MetricWriter(str(tmp_path / "quiet"), tensorboard=False, console=None)
    assert silent.console is None
    writer.close()
    silent.close()
    with open(tmp_path / "metrics.jsonl") as f:  # the writer still created its log file
        assert [json.loads(line) for line in f] == []
