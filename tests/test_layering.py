"""The library ``mmjax/`` never imports the applications built on it (``experiments/``, ``benchmarks/``)."""
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
