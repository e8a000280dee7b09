"""Tests for pipelines.models.weights against a loopback fake of the Hugging Face hub.

The fake hub is a real threaded HTTP server on 127.0.0.1 serving files at
/{repo}/resolve/{revision}/{path}, honouring (or, on demand, ignoring) Range
requests. Nothing here touches the network beyond loopback.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from pipelines.errors import WeightsError
from pipelines.models.weights import (
    LOCK_NAME,
    Status,
    download_set,
    list_sets,
    load_manifest,
    resolve_weights_dir,
    verify_set,
)

REPO = "acme/inpaint-model"
REVISION = "0123456789abcdef0123456789abcdef01234567"
BIG = bytes(range(256)) * 1200  # 307 200 bytes: several chunks for the client
SMALL = b'{"_class_name": "UNet2DConditionModel"}\n'


# --------------------------------------------------------------------------
# Fake hub
# --------------------------------------------------------------------------


class _HubHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server naming)
        hub = self.server.hub
        hub.requests.append(
            {"path": self.path, "range": self.headers.get("Range"), "auth": self.headers.get("Authorization")}
        )
        repo, sep, rest = self.path.lstrip("/").partition("/resolve/")
        file = hub.root / repo / unquote(rest)
        if not sep or not file.is_file():
            self.send_error(404)
            return
        self._send(file.read_bytes(), rest.split("/", 1)[0], hub.honour_range)
        hub.truncate_after = None  # only the first answer is cut short

    def _send(self, data: bytes, revision: str, honour_range: bool):
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match.group(1)) if match and honour_range else None
        if start is not None and start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data[start:] if start is not None else data
        self.send_response(206 if start is not None else 200)
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Repo-Commit", revision)
        self.end_headers()
        self.wfile.write(body[: self.server.hub.truncate_after])

    def log_message(self, *args):
        pass


class FakeHub:
    def __init__(self, root: Path):
        self.root = root
        self.requests: list[dict] = []
        self.honour_range = True
        self.truncate_after: int | None = None  # cut the next body short, as a dropped connection
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
        self.server.hub = self
        # a short poll interval keeps shutdown() (one per test) from costing half a second
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, path: str, data: bytes, repo: str = REPO, revision: str = REVISION) -> None:
        file = self.root / repo / revision / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("SEGSWAP_HF_ENDPOINT", "HF_ENDPOINT", "HF_TOKEN", "SEGSWAP_WEIGHTS_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def hub(tmp_path):
    fake = FakeHub(tmp_path / "hub")
    fake.add("unet/model.safetensors", BIG)
    fake.add("unet/config.json", SMALL)
    yield fake
    fake.close()


@pytest.fixture
def weights(tmp_path) -> Path:
    return tmp_path / "weights"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(path: str, data: bytes | None, **overrides) -> dict:
    """A manifest file entry for `path` in the fake repo; data=None leaves size/sha256 unknown."""
    fields = {
        "repo": REPO,
        "revision": REVISION,
        "path": path,
        "dest": f"base/{path}",
        "size": len(data) if data is not None else 0,
        "sha256": sha(data) if data is not None else "",
    }
    fields.update(overrides)
    return fields


def write_manifest(tmp_path: Path, files: list[dict], arch: str = "sd15") -> Path:
    lines = ["schema = 1", "", "[sets.demo]", 'description = "test set"', f'arch = "{arch}"', 'license = "mit"']
    for item in files:
        lines += ["", "[[sets.demo.files]]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in item.items()]
    path = tmp_path / "manifest.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def manifest(tmp_path):
    return load_manifest(
        write_manifest(tmp_path, [entry("unet/model.safetensors", BIG), entry("unet/config.json", SMALL)])
    )


def part_of(weights: Path, dest: str) -> Path:
    return weights / "demo" / (dest + ".part")


# --------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------


def test_full_download_then_verify_ok(hub, manifest, weights):
    report = download_set(manifest, "demo", weights, endpoint=hub.url)

    assert [f.action for f in report.files] == ["downloaded", "downloaded"]
    assert (weights / "demo/base/unet/model.safetensors").read_bytes() == BIG
    assert (weights / "demo/base/unet/config.json").read_bytes() == SMALL
    assert not list((weights / "demo").rglob("*.part"))
    check = verify_set(manifest, "demo", weights)
    assert check.ok and [c.status for c in check.files] == [Status.OK, Status.OK]


def test_present_verified_files_are_skipped(hub, manifest, weights):
    download_set(manifest, "demo", weights, endpoint=hub.url)
    hub.requests.clear()

    report = download_set(manifest, "demo", weights, endpoint=hub.url)

    assert hub.requests == []
    assert [f.action for f in report.files] == ["skipped", "skipped"]


def test_partial_download_is_resumed_with_range(hub, manifest, weights):
    half = len(BIG) // 2
    part = part_of(weights, "base/unet/model.safetensors")
    part.parent.mkdir(parents=True)
    part.write_bytes(BIG[:half])

    report = download_set(manifest, "demo", weights, endpoint=hub.url)

    big_requests = [r for r in hub.requests if r["path"].endswith("model.safetensors")]
    assert [r["range"] for r in big_requests] == [f"bytes={half}-"]
    assert report.files[0].action == "resumed"
    assert (weights / "demo/base/unet/model.safetensors").read_bytes() == BIG
    assert not part.exists()
    assert verify_set(manifest, "demo", weights).ok


def test_dropped_connection_keeps_the_part_for_the_next_run(hub, manifest, weights):
    hub.truncate_after = 100_000

    with pytest.raises(WeightsError, match="was interrupted .*run it again to resume"):
        download_set(manifest, "demo", weights, endpoint=hub.url)
    assert part_of(weights, "base/unet/model.safetensors").read_bytes() == BIG[:100_000]

    download_set(manifest, "demo", weights, endpoint=hub.url)

    assert hub.requests[-2]["range"] == "bytes=100000-"
    assert verify_set(manifest, "demo", weights).ok


def test_server_ignoring_range_restarts_from_zero(hub, manifest, weights):
    hub.honour_range = False
    part = part_of(weights, "base/unet/model.safetensors")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\xff" * 1000)  # junk: would corrupt the file if appended to

    download_set(manifest, "demo", weights, endpoint=hub.url)

    assert hub.requests[0]["range"] == "bytes=1000-"
    assert (weights / "demo/base/unet/model.safetensors").read_bytes() == BIG
    assert verify_set(manifest, "demo", weights).ok


def test_complete_leftover_part_answered_416_is_kept(hub, tmp_path, weights):
    # size unknown, so the client cannot tell the .part is complete and asks past its end
    manifest = load_manifest(write_manifest(tmp_path, [entry("unet/model.safetensors", BIG, size=0)]))
    part = part_of(weights, "base/unet/model.safetensors")
    part.parent.mkdir(parents=True)
    part.write_bytes(BIG)

    download_set(manifest, "demo", weights, endpoint=hub.url)

    assert hub.requests[0]["range"] == f"bytes={len(BIG)}-"
    assert (weights / "demo/base/unet/model.safetensors").read_bytes() == BIG


def test_checksum_mismatch_deletes_part_and_names_both_hashes(hub, tmp_path, weights):
    wrong = "0" * 64
    manifest = load_manifest(write_manifest(tmp_path, [entry("unet/model.safetensors", BIG, sha256=wrong)]))

    with pytest.raises(WeightsError) as info:
        download_set(manifest, "demo", weights, endpoint=hub.url)

    message = str(info.value)
    assert "base/unet/model.safetensors" in message and wrong in message and sha(BIG) in message
    assert not (weights / "demo/base/unet/model.safetensors").exists()
    assert not part_of(weights, "base/unet/model.safetensors").exists()


def test_file_larger_than_manifest_size_is_rejected(hub, tmp_path, weights):
    manifest = load_manifest(write_manifest(tmp_path, [entry("unet/model.safetensors", BIG, size=100)]))

    with pytest.raises(WeightsError, match="manifest says 100"):
        download_set(manifest, "demo", weights, endpoint=hub.url)
    assert not part_of(weights, "base/unet/model.safetensors").exists()


def test_unreachable_endpoint_gives_one_clear_sentence(manifest, weights):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"

    with pytest.raises(WeightsError) as info:
        download_set(manifest, "demo", weights, endpoint=endpoint)

    message = str(info.value)
    assert message.startswith(f"cannot reach {endpoint}: ")
    assert "copy the folder" in message and "SEGSWAP_WEIGHTS_DIR" in message
    assert "\n" not in message


def test_missing_file_on_hub_is_a_clear_404(hub, tmp_path, weights):
    manifest = load_manifest(write_manifest(tmp_path, [entry("nope.bin", b"x")]))

    with pytest.raises(WeightsError, match=r"nope\.bin was not found \(HTTP 404\)"):
        download_set(manifest, "demo", weights, endpoint=hub.url)


def test_env_endpoint_and_hf_token_are_used(hub, manifest, weights, monkeypatch):
    monkeypatch.setenv("SEGSWAP_HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # SEGSWAP_HF_ENDPOINT wins
    monkeypatch.setenv("HF_TOKEN", "hf_secret")

    download_set(manifest, "demo", weights)

    assert {r["auth"] for r in hub.requests} == {"Bearer hf_secret"}


def test_progress_reports_bytes_up_to_the_total(hub, manifest, weights):
    seen: dict[str, tuple[int, int | None]] = {}
    download_set(
        manifest,
        "demo",
        weights,
        endpoint=hub.url,
        progress=lambda dest, done, total: seen.__setitem__(dest, (done, total)),
    )

    assert seen["base/unet/model.safetensors"] == (len(BIG), len(BIG))
    assert seen["base/unet/config.json"] == (len(SMALL), len(SMALL))


# --------------------------------------------------------------------------
# Unknown checksums: trust on first download, recorded in the lock file
# --------------------------------------------------------------------------


def test_unknown_checksum_is_recorded_then_enforced(hub, tmp_path, weights):
    manifest = load_manifest(write_manifest(tmp_path, [entry("unet/config.json", None)]))
    target = weights / "demo/base/unet/config.json"

    report = download_set(manifest, "demo", weights, endpoint=hub.url)

    assert report.files[0].verified is False and report.recorded_unverified == list(report.files)
    lock = json.loads((weights / "demo" / LOCK_NAME).read_text())["files"]["base/unet/config.json"]
    assert lock["sha256"] == sha(SMALL) and lock["commit"] == REVISION
    first = verify_set(manifest, "demo", weights).files[0]
    assert (first.status, first.checked_against) == (Status.OK, "lock")

    target.write_bytes(SMALL.replace(b"UNet", b"Vnet"))
    assert verify_set(manifest, "demo", weights).files[0].status is Status.SHA256_MISMATCH

    (weights / "demo" / LOCK_NAME).unlink()
    report = verify_set(manifest, "demo", weights)
    assert report.files[0].status is Status.UNVERIFIABLE and report.usable and not report.ok


# --------------------------------------------------------------------------
# Verify
# --------------------------------------------------------------------------


def test_verify_reports_missing_and_corrupted_files(hub, tmp_path, weights):
    other = b"other bytes" * 100
    hub.add("vae/model.safetensors", other)
    manifest = load_manifest(
        write_manifest(
            tmp_path,
            [
                entry("unet/model.safetensors", BIG),
                entry("unet/config.json", SMALL),
                entry("vae/model.safetensors", other),
            ],
        )
    )
    download_set(manifest, "demo", weights, endpoint=hub.url)
    folder = weights / "demo/base"
    (folder / "unet/config.json").unlink()
    (folder / "unet/model.safetensors").write_bytes(BIG[::-1])  # same size, other bytes
    (folder / "vae/model.safetensors").write_bytes(other[:-1])

    report = verify_set(manifest, "demo", weights)

    statuses = {check.dest: check.status for check in report.files}
    assert statuses == {
        "base/unet/model.safetensors": Status.SHA256_MISMATCH,
        "base/unet/config.json": Status.MISSING,
        "base/vae/model.safetensors": Status.SIZE_MISMATCH,
    }
    assert not report.ok and not report.usable
    assert sha(BIG[::-1]) in report.files[0].describe()


def test_verify_uses_segswap_weights_dir(hub, manifest, weights, monkeypatch):
    download_set(manifest, "demo", weights, endpoint=hub.url)
    monkeypatch.setenv("SEGSWAP_WEIGHTS_DIR", str(weights))

    assert verify_set(manifest, "demo").ok


# --------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"sha256": "abc"}, "sha256 must be 64"),
        ({"revision": "main"}, "revision must be a 40-hex"),
        ({"size": -1}, "size must be a whole number"),
        ({"dest": "../escape.bin"}, "dest must be a relative path"),
        ({"repo": "no-owner"}, "not of the form owner/name"),
        ({"colour": "red"}, "unknown field"),
    ],
)
def test_malformed_file_entry_is_named(tmp_path, change, complaint):
    path = write_manifest(tmp_path, [entry("unet/config.json", SMALL, **change)])

    with pytest.raises(WeightsError, match=complaint) as info:
        load_manifest(path)
    assert "set 'demo' file 1" in str(info.value)


def test_malformed_manifest_shapes(tmp_path):
    path = tmp_path / "bad.toml"
    cases = {
        "sets = [": "not valid TOML",
        "schema = 1": "names no model sets",
        "schema = 2\n[sets.x]": "schema 2",
    }
    for text, complaint in cases.items():
        path.write_text(text)
        with pytest.raises(WeightsError, match=complaint):
            load_manifest(path)
    no_sha = entry("a.json", SMALL)
    del no_sha["sha256"]
    with pytest.raises(WeightsError, match="is missing sha256"):
        load_manifest(write_manifest(tmp_path, [no_sha]))
    with pytest.raises(WeightsError, match="arch 'sd3'"):
        load_manifest(write_manifest(tmp_path, [entry("a.json", SMALL)], arch="sd3"))
    with pytest.raises(WeightsError, match="twice"):
        load_manifest(write_manifest(tmp_path, [entry("a.json", SMALL), entry("a.json", SMALL)]))
    with pytest.raises(WeightsError, match="not found"):
        load_manifest(tmp_path / "absent.toml")


def test_unknown_set_name_lists_known_sets(manifest, weights):
    with pytest.raises(WeightsError, match="unknown model set 'sdxl'; the manifest names: demo"):
        verify_set(manifest, "sdxl", weights)


def test_list_sets_rows(manifest):
    [row] = list_sets(manifest)
    assert (row.name, row.arch, row.description, row.license) == ("demo", "sd15", "test set", "mit")
    assert (row.total_bytes, row.file_count) == (len(BIG) + len(SMALL), 2)


SDXL_BASE = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "vae/config.json",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.fp16.safetensors",
]
TOKENIZER = ["vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"]
ENCODER = ["ip_adapter/models/image_encoder/config.json", "ip_adapter/models/image_encoder/model.safetensors"]
EXPECTED_DESTS = {
    "sdxl": {f"base/{p}" for p in SDXL_BASE}
    | {f"base/{tok}/{f}" for tok in ("tokenizer", "tokenizer_2") for f in TOKENIZER}
    | {
        "ip_adapter/sdxl_models/ip-adapter_sdxl_vit-h.safetensors",
        "ip_adapter/sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",
        *ENCODER,
    },
    "sd15": {f"base/{p}" for p in SDXL_BASE if "text_encoder_2" not in p}
    | {f"base/tokenizer/{f}" for f in TOKENIZER}
    | {"ip_adapter/models/ip-adapter_sd15.safetensors", "ip_adapter/models/ip-adapter-plus_sd15.safetensors", *ENCODER},
}


def test_shipped_manifest_names_the_layout():
    manifest = load_manifest()

    assert {"sdxl", "sd15"} <= set(manifest.sets)
    for name, needed in EXPECTED_DESTS.items():
        model_set = manifest.get(name)
        assert model_set.arch == name
        assert needed <= {spec.dest for spec in model_set.files}, name
        for spec in model_set.files:
            assert re.fullmatch(r"[0-9a-f]{40}", spec.revision), spec.dest
            if spec.dest.endswith(".safetensors"):  # every weight file is fully pinned
                assert spec.size > 0 and spec.sha256, spec.dest


def test_shipped_manifest_is_the_default_and_package_data():
    import pipelines.models

    assert load_manifest().path == Path(pipelines.models.__file__).resolve().parent / "manifest.toml"
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "manifest.toml" in pyproject["tool"]["setuptools"]["package-data"]["pipelines.models"]


def test_default_weights_dir_is_in_the_data_directory_not_the_checkout(monkeypatch, tmp_path):
    monkeypatch.setenv("SEGSWAP_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SEGSWAP_WEIGHTS_DIR", raising=False)
    assert resolve_weights_dir() == tmp_path / "weights"
    monkeypatch.setenv("SEGSWAP_WEIGHTS_DIR", str(tmp_path / "elsewhere"))
    assert resolve_weights_dir() == tmp_path / "elsewhere"


@pytest.mark.parametrize("name", ["flux2-klein", "flux2-klein-base"])
def test_shipped_flux2_sets_download_into_a_complete_set(tmp_path, name):
    """Every file the manifest names, laid where it says, is a set the engine accepts, under its own name."""
    from pipelines.models.model_sets import find_model_set

    model_set = load_manifest().get(name)
    assert model_set.arch == "flux2" and model_set.license == "apache-2.0"
    for spec in model_set.files:
        target = tmp_path / name / spec.dest
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"{}")
        assert re.fullmatch(r"[0-9a-f]{40}", spec.revision), spec.dest
    (tmp_path / name / "base" / "model_index.json").write_text(json.dumps({"is_distilled": name == "flux2-klein"}))
    found = find_model_set(tmp_path, name)
    assert found is not None and found.name == name
    weights_files = [spec for spec in model_set.files if spec.dest.endswith(".safetensors")]
    assert {spec.dest.split("/")[1] for spec in weights_files} == {"transformer", "vae", "text_encoder"}
    assert all(spec.size > 0 and spec.sha256 for spec in weights_files), "every weight file is pinned"


@pytest.mark.parametrize("name", ["sam2", "owlv2"])
def test_shipped_selection_sets_download_into_what_the_segmenter_loads(tmp_path, name):
    from pipelines.models import mask_files

    model_set = load_manifest().get(name)
    assert model_set.arch == name and model_set.license == "apache-2.0"
    assert mask_files.installed(tmp_path, name) is None
    for spec in model_set.files:
        assert re.fullmatch(r"[0-9a-f]{40}", spec.revision) and spec.size > 0 and spec.sha256, spec.dest
        (tmp_path / name / spec.dest).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name / spec.dest).write_bytes(b"{}")
    assert mask_files.installed(tmp_path, name) == tmp_path / name
