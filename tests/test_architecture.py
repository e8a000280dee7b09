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
