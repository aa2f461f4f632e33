"""`import mmjax` (everything outside mmjax.data) must not import tensorflow."""
import subprocess
import sys
import textwrap


def test_import_mmjax_does_not_import_tensorflow():
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import mmjax
        skipped = []
        for m in pkgutil.walk_packages(mmjax.__path__, "mmjax."):
            if m.name.startswith("mmjax.data"):
                skipped.append(m.name)
                continue
            importlib.import_module(m.name)
        import experiments.__main__
        bad = sorted(k for k in sys.modules if k == "tensorflow" or k.startswith("tensorflow."))
        assert not bad, bad[:5]
        print("ok", len(sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok")
