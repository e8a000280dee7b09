"""In CI (SEGSWAP_REQUIRE_EXTRAS=1) a test skipped because a library does not import fails instead."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MISSING = """
import pytest

pytest.importorskip("segswap_no_such_library")  # a module whose library is missing


def test_nothing():
    pass
"""
IN_A_TEST = """
import pytest


def test_needs_it():
    pytest.importorskip("segswap_no_such_library")


def test_skipped_for_another_reason():
    pytest.skip("not on this platform")
"""


def run_pytest(folder: Path, test_file: str, required: bool) -> subprocess.CompletedProcess:
    """pytest on `test_file` (or ".") under this suite's conftest (its hooks), with SEGSWAP_REQUIRE_EXTRAS=1 or not."""
    (folder / "conftest.py").write_text("from tests.conftest import *  # noqa: F403\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "SEGSWAP_REQUIRE_EXTRAS": "1" if required else ""}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=120)


def test_a_missing_library_skips_outside_ci_and_fails_in_it(tmp_path):
    (tmp_path / "test_module_level.py").write_text(MISSING)
    (tmp_path / "test_in_a_test.py").write_text(IN_A_TEST)
    outside = run_pytest(tmp_path, ".", required=False)
    assert outside.returncode == 0 and "3 skipped" in outside.stdout, outside.stdout
    module_level = run_pytest(tmp_path, "test_module_level.py", required=True)
    assert module_level.returncode != 0 and "1 error" in module_level.stdout, module_level.stdout
    in_a_test = run_pytest(tmp_path, "test_in_a_test.py", required=True)
    assert in_a_test.returncode == 1 and "1 failed, 1 skipped" in in_a_test.stdout, in_a_test.stdout
    for run in (module_level, in_a_test):
        assert "SEGSWAP_REQUIRE_EXTRAS=1 but could not import 'segswap_no_such_library'" in run.stdout, run.stdout
