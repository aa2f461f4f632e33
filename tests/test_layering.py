"""Layering rules: the library ``mmjax/`` never imports the applications built on it (``experiments/``,
``benchmarks/``), uses public Orbax APIs only, and its step loop holds no fault point."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
APPLICATIONS = ("experiments", "benchmarks")


def _imported_modules(tree: ast.AST):
    """(line, module name) of every import statement in ``tree``, lazy ones inside functions included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def test_mmjax_never_imports_experiments_or_benchmarks():
    files = sorted((ROOT / "mmjax").rglob("*.py"))
    assert files, "no mmjax sources found"
    bad = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, module in _imported_modules(tree):
            if module.split(".")[0] in APPLICATIONS:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_the_check_sees_lazy_imports():
    tree = ast.parse("def f():\n    from experiments import data_factory\n    import benchmarks.common\n")
    assert [m for _, m in _imported_modules(tree)] == ["experiments", "benchmarks.common"]


def test_mmjax_uses_public_orbax_apis_only():
    bad = []
    for path in sorted((ROOT / "mmjax").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, module in _imported_modules(tree):
            if module.startswith("orbax") and any(part.startswith("_") for part in module.split(".")):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_the_step_loop_calls_no_fault_point():
    """Fault injection wraps the loop's parts from outside (mmjax/train/faults.py)."""
    tree = ast.parse((ROOT / "mmjax" / "train" / "step_loop.py").read_text(encoding="utf-8"))
    calls = [node.func.attr for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and isinstance(node.func.value, ast.Name) and node.func.value.id in ("faults", "health")]
    assert calls and set(calls) <= {"before", "after", "after_each_call", "poison_batches"}, calls
