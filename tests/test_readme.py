"""The README's command blocks run as written: each bash and python block, in order, in a folder that holds what a
fresh clone after `scripts/install.sh` holds (`.venv`, `examples/`), against `segswap serve` on the composite
engine (on 127.0.0.1, without keys, as the README's first command starts it; `$KEY` holds a key the examples
send, which such a server ignores). A block that cannot run here says why in a comment just above it:

    <!-- not run by tests/test_readme.py: REASON -->

Only the port changes: `127.0.0.1:8000` becomes the test server's."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from server.api.live_server import free_port

REPO = Path(__file__).resolve().parents[1]
NOT_RUN = re.compile(r"<!-- not run by tests/test_readme.py: (.+?) -->")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
KEY = "readme-test-key"
BLOCK_TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    line: int
    language: str
    text: str
    not_run: str | None  # why, when it is not run


def readme_blocks(readme: str) -> list[Block]:
    blocks = []
    for match in FENCE.finditer(readme):
        before = readme[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = NOT_RUN.fullmatch(before.strip())
        line = readme.count("\n", 0, match.start()) + 1
        blocks.append(Block(line, match.group(1), match.group(2), reason.group(1) if reason else None))
    return [block for block in blocks if block.language in ("bash", "python")]


BLOCKS = readme_blocks((REPO / "README.md").read_text())


def test_every_block_not_run_says_why_and_most_run():
    assert all(block.not_run.strip() for block in BLOCKS if block.not_run)
    run = [block for block in BLOCKS if not block.not_run]
    assert len(run) >= 2 * (len(BLOCKS) - len(run)), [block.line for block in BLOCKS if block.not_run]


def test_a_marked_block_is_found_and_an_unmarked_one_runs():
    readme = (
        "<!-- not run by tests/test_readme.py: needs a GPU -->\n```bash\nnvidia-smi\n```\n\n```python\nx = 1\n```\n"
    )
    assert readme_blocks(readme) == [
        Block(2, "bash", "nvidia-smi\n", "needs a GPU"),
        Block(6, "python", "x = 1\n", None),
    ]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """What a fresh clone holds after scripts/install.sh: the venv (this one) and the generated examples."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    subprocess.run([sys.executable, str(REPO / "examples" / "make_examples.py"), str(folder / "examples")], check=True)
    for text in (REPO / "examples").glob("*.jsonl"):
        shutil.copy(text, folder / "examples")
    return folder


@pytest.fixture(scope="module")
def server(clone):
    port = free_port()
    env = _environment(clone, port)
    log = (clone / "server.log").open("w")
    process = subprocess.Popen(
        [".venv/bin/segswap", "serve", "--port", str(port), "--engine", "composite"],
        cwd=clone,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}/health/ready", process, clone / "server.log")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.mark.parametrize("block", [b for b in BLOCKS if not b.not_run], ids=lambda b: f"README.md:{b.line}")
def test_the_readme_block_runs_as_written(block, clone, server):
    text = block.text.replace("127.0.0.1:8000", f"127.0.0.1:{server}")
    command = ["bash", "-euo", "pipefail", "-c", text] if block.language == "bash" else [".venv/bin/python", "-c", text]
    process = subprocess.Popen(
        command,
        cwd=clone,
        env=_environment(clone, server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a block's own children go too when it runs over
    )
    try:
        stdout, stderr = process.communicate(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"README.md:{block.line} ran past {BLOCK_TIMEOUT_S} s\n{text}\n--- stderr\n{stderr[-2000:]}")
    assert process.returncode == 0, f"README.md:{block.line}\n{text}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"


def _environment(clone: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGSWAP_")}
    return env | {
        "KEY": KEY,
        "SEGSWAP_DATA_DIR": str(clone / "data"),
        "SEGSWAP_WEIGHTS_DIR": str(clone / "weights"),
        "SEGSWAP_PORT": str(port),
        "PATH": f"{clone / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
    }


def _wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"segswap serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"segswap serve was not ready in 180 s: {log.read_text()[-2000:]}")
