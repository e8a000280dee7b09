"""The Docker image installs the way the README and CI do, so it cannot drift from what is tested."""

import fnmatch
import os
import re
import subprocess
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_dockerfile_uses_the_install_script_a_non_root_user_and_readiness():
    dockerfile = (REPO / "Dockerfile").read_text()
    # By default the CUDA base and the diffusion install; scripts/check_image.sh overrides both.
    assert "ARG BASE=nvidia/cuda:" in dockerfile and "FROM ${BASE} AS segswap" in dockerfile
    assert "ARG INSTALL_FLAGS=--diffusion" in dockerfile and "RUN scripts/install.sh ${INSTALL_FLAGS}" in dockerfile
    assert (
        "\nUSER segswap\n" in dockerfile
        and "VOLUME /weights /data" in dockerfile
        and "SEGSWAP_DATA_DIR=/data" in dockerfile
    )
    assert "HEALTHCHECK" in dockerfile and "/health/ready" in dockerfile


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci/run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("scripts/install.sh"))
    assert command in readme


def test_every_copied_path_exists():
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source


def _copied_into_the_image() -> list[str]:
    dockerfile = (REPO / "Dockerfile").read_text()
    return [source for line in dockerfile.splitlines() if line.startswith("COPY ") for source in line.split()[1:-1]]


def test_the_image_copies_what_install_sh_needs_and_dockerignore_keeps_it():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    needed = {"pyproject.toml", pyproject["project"]["readme"], *(name.rstrip("*") for name in packages)}
    needed |= set(re.findall(r"\b(?:scripts|examples)/[\w.]+", (REPO / "scripts/install.sh").read_text()))
    needed.add("scripts/smoke_image.py")
    copied = _copied_into_the_image()
    ignored = [p for p in (REPO / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    for path in needed:
        assert any(path == source or path.startswith(source.rstrip("/") + "/") for source in copied), path
        assert not any(fnmatch.fnmatch(path, pattern.removeprefix("**/")) for pattern in ignored), path


def test_the_smoke_stage_swaps_in_the_image_but_is_not_the_default_target():
    stages = [line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("FROM ")]
    assert stages == ["FROM ${BASE} AS segswap", "FROM segswap AS smoke", "FROM segswap"]
    smoke = (REPO / "scripts/smoke_image.py").read_text()
    assert "/health/ready" in smoke and "/v1/seg-swap" in smoke and "image/png" in smoke


def test_check_image_script_is_executable_and_parses():
    script = REPO / "scripts/check_image.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "--isolation=chroot" in text and "--target smoke" in text and "BASE=" in text
