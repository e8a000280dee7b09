"""The Docker image installs the way the README and CI do, so it cannot drift from what is tested."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_dockerfile_uses_the_install_script_a_non_root_user_and_readiness():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "RUN scripts/install.sh --diffusion" in dockerfile
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
