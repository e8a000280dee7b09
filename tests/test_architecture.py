"""The dependency rules hold, and a change that breaks one makes the linter fail (what CI runs)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the product's packages and its contracts, to break on purpose."""
    for name in ("server", "pipelines", "bench"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "static", "configs"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_repository_keeps_every_contract():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(
    ("module", "source", "contract"),
    [
        ("pipelines/leak.py", "import server.settings\n", "pipelines (the engine) never imports server"),
        ("server/inputs/leak.py", "import bench.load_test\n", "the product never imports bench/"),
        ("pipelines/models/leak.py", "import pipelines.masks.grabcut\n", "pipelines.models (where weights live"),
        ("server/experiments/leak.py", "import server.api.v1\n", "the CLI, batches and the benchmark reach the HTTP"),
        ("server/jobs/leak.py", "import fastapi\n", "only the HTTP room and the Ray deployment import FastAPI"),
        (
            "server/access/leak.py",
            "import server.api.deps\n",
            "access, inputs, jobs and serving do not import the HTTP",
        ),
    ],
)
def test_a_forbidden_import_fails_the_lint(tree, module, source, contract):
    (tree / module).write_text(source)
    result = lint_imports(tree)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts")[-1]
    assert contract in broken, result.stdout


def private_imports(root: Path) -> list[str]:
    """`from <first-party module> import _name` anywhere in the product: a module reaching into another's
    private names (a leading underscore means "this module's own")."""
    import ast

    found = []
    for path in sorted(p for name in ("server", "pipelines", "bench") for p in (root / name).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("server", "pipelines"):
                found += [
                    f"{path.relative_to(root)}: {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    return found


def test_no_module_imports_another_modules_private_names():
    assert private_imports(REPO) == []


def test_a_private_import_is_found(tree):
    (tree / "server" / "benchmark" / "leak.py").write_text("from pipelines.models.tiny import _secret\n")
    assert private_imports(tree) == ["server/benchmark/leak.py: pipelines.models.tiny._secret"]
