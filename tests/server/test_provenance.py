"""Provenance marks (server/inputs/provenance.py): C2PA content credentials signed with a throwaway certificate and
read back, SDXL's invisible watermark found by `segswap info`, both off by default, bad configurations refused at
start."""

import datetime
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

pytest.importorskip("c2pa")
pytest.importorskip("imwatermark")

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pipelines.engines.composite import CompositeEngine
from server.api.app import create_app
from server.api.live_server import free_port
from server.cli.main import main
from server.inputs.encode import encode_image
from server.inputs.metadata import read
from server.inputs.provenance import (
    WATERMARK_FOUND,
    WATERMARK_ROBUST_FROM,
    Provenance,
    configured,
    credentials,
    watermark_bits,
)
from server.settings import Settings
from tests.conftest import b64, rect_mask, wait_ready
from tests.server.conftest import KEY

ORGANISATION = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "segswap tests")


def _certificate(name, key, issuer_name, issuer_key, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    usage = dict.fromkeys(
        [
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "encipher_only",
            "decipher_only",
        ],
        False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name), ORGANISATION]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name), ORGANISATION]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=not ca, key_cert_sign=ca, crl_sign=ca, **usage), critical=True)
    )
    if not ca:  # C2PA wants a leaf for signing content (not a self-signed certificate), naming its issuer's key
        builder = (
            builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def signing(tmp_path_factory) -> dict:
    """A throwaway CA and a signing certificate under it, as PEM files: the chain (signer first) and the key."""
    folder = tmp_path_factory.mktemp("c2pa")
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("segswap test CA", ca_key, "segswap test CA", ca_key, ca=True)
    leaf = _certificate("segswap test signer", key, "segswap test CA", ca_key, ca=False)
    (folder / "chain.pem").write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    )
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return {"c2pa_cert": folder / "chain.pem", "c2pa_key": folder / "key.pem"}


def photo_like(size: tuple[int, int]) -> Image.Image:
    """Smooth, moderately saturated colour fields, as photographs mostly are. (On pure saturated noise the DWT-DCT
    watermark's YUV round trip clips, and the mark is neither invisible nor reliably found.)"""
    cells = np.random.default_rng(3).integers(70, 190, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
    return Image.fromarray(cells, "RGB").resize(size, Image.Resampling.BICUBIC)


def swap_body(size=(512, 384)) -> dict:
    return {
        "main_image": b64(photo_like(size)),
        "mask_image": b64(rect_mask(size, (80, 60, 240, 220))),
        "object_image": b64(Image.new("RGB", (60, 60), (170, 90, 80))),
        "seed": 4,
    }


def post(settings: Settings, body: dict) -> bytes:
    with TestClient(create_app(settings, CompositeEngine()), headers={"x-api-key": KEY}) as client:
        wait_ready(client)
        response = client.post("/v1/seg-swap", json=body)
        assert response.status_code == 200, response.text
        return response.content


@pytest.mark.parametrize(("image_format", "media_type"), [("png", "image/png"), ("jpeg", "image/jpeg")])
def test_outputs_carry_c2pa_credentials_stating_a_generative_edit(signing, image_format, media_type):
    body = {**swap_body(), "image_format": image_format}
    signed = post(Settings(api_keys=[KEY], **signing), body)
    claim = credentials(signed, media_type)
    assert claim["signer"]["common_name"] == "segswap test signer" and claim["signer"]["issuer"] == "segswap tests"
    kinds = {action["action"]: action.get("digitalSourceType", "") for action in claim["actions"]}
    assert kinds["c2pa.created"].endswith("/compositeWithTrainedAlgorithmicMedia")
    assert kinds["c2pa.edited"].endswith("/trainedAlgorithmicMedia")
    assert claim["claim_generator"][0]["name"] == "segswap"
    # exactly: a throwaway CA is nobody's trust anchor, and nothing else (a byte changed after signing would add
    # assertion.dataHash.mismatch)
    assert claim["validation"] == ["signingCredential.untrusted"]
    plain = post(Settings(api_keys=[KEY]), body)
    assert credentials(plain, media_type) is None  # off by default
    signed_image, plain_image = Image.open(io.BytesIO(signed)), Image.open(io.BytesIO(plain))
    assert read(signed_image) == read(plain_image)  # the record survives signing
    assert np.array_equal(np.asarray(signed_image), np.asarray(plain_image))


def test_a_chunk_added_after_signing_fails_validation(signing):
    """What the exact validation list above guards against: the reader does report a file changed after signing."""
    signed = post(Settings(api_keys=[KEY], **signing), swap_body())
    chunk = b"tEXtcomment\x00added later"
    added = struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk))
    changed = signed[:-12] + added + signed[-12:]  # before IEND
    assert credentials(changed, "image/png")["validation"] == [
        "signingCredential.untrusted",
        "assertion.dataHash.mismatch",
    ]


def test_the_watermark_is_found_in_marked_outputs_only(tmp_path, capsys):
    body = swap_body()
    marked = post(Settings(api_keys=[KEY], watermark=True), body)
    plain = post(Settings(api_keys=[KEY]), body)
    assert watermark_bits(Image.open(io.BytesIO(marked))) >= WATERMARK_FOUND
    assert watermark_bits(Image.open(io.BytesIO(plain))) < WATERMARK_FOUND
    difference = np.abs(
        np.asarray(Image.open(io.BytesIO(marked)), dtype=int) - np.asarray(Image.open(io.BytesIO(plain)), dtype=int)
    )
    assert 0 < difference.mean() < 3  # invisible, and everywhere
    (tmp_path / "marked.png").write_bytes(marked)
    assert main(["info", str(tmp_path / "marked.png")]) == 0
    shown = capsys.readouterr().out
    assert "watermark   found (" in shown and "engine      composite" in shown


def test_info_shows_the_credentials(signing, tmp_path, capsys):
    (tmp_path / "signed.png").write_bytes(post(Settings(api_keys=[KEY], **signing), swap_body()))
    assert main(["info", str(tmp_path / "signed.png")]) == 0
    shown = capsys.readouterr().out
    assert "c2pa        signed by segswap test signer (segswap tests)" in shown
    assert "c2pa        c2pa.edited (trainedAlgorithmicMedia)" in shown


def test_bad_provenance_settings_are_refused_before_serving(signing, tmp_path):
    with pytest.raises(ValueError, match="needs both SEGSWAP_C2PA_CERT and SEGSWAP_C2PA_KEY"):
        Settings(c2pa_cert=signing["c2pa_cert"])
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="cannot sign"):
        create_app(Settings(c2pa_cert=tmp_path / "junk.pem", c2pa_key=signing["c2pa_key"]), CompositeEngine())
    with pytest.raises(ValueError, match="cannot be read"):
        create_app(Settings(c2pa_cert=tmp_path / "missing.pem", c2pa_key=signing["c2pa_key"]), CompositeEngine())


def test_a_certificate_or_key_that_is_no_small_readable_file_is_one_line_at_start(
    signing, tmp_path, monkeypatch, capsys
):
    """/dev/zero grew `segswap swap` past 4 GB and hung `segswap serve`; a FIFO would wait for a writer for ever;
    root read a mode-000 key without a word."""
    os.mkfifo(tmp_path / "fifo.pem")
    (tmp_path / "locked.pem").write_bytes(signing["c2pa_key"].read_bytes())
    (tmp_path / "locked.pem").chmod(0)
    (tmp_path / "huge.pem").write_bytes(b"-" * (2**20 + 1))
    cases = {
        ("c2pa_cert", Path("/dev/zero")): "the C2PA certificate cannot be read: /dev/zero is not a regular file",
        ("c2pa_key", tmp_path / "fifo.pem"): "fifo.pem is not a regular file",
        ("c2pa_key", tmp_path / "locked.pem"): "locked.pem: its permissions let no one read it",
        ("c2pa_cert", tmp_path / "huge.pem"): "huge.pem is larger than",
        ("c2pa_key", tmp_path): "is a folder",
    }
    for (field, path), message in cases.items():
        with pytest.raises(ValueError, match="cannot be read") as raised:
            create_app(Settings(api_keys=[KEY], **{**signing, field: path}), CompositeEngine())
        assert message in str(raised.value) and "\n" not in str(raised.value)
    monkeypatch.setenv("SEGSWAP_C2PA_CERT", "/dev/zero")
    monkeypatch.setenv("SEGSWAP_C2PA_KEY", str(signing["c2pa_key"]))
    serve = ["serve", "--engine", "composite", "--port", str(free_port())]
    for command in (serve, ["swap", "--main", "m.png", "--mask", "k.png", "-o", "o.png"]):
        assert main(command) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "/dev/zero is not a regular file" in error


# What the watermark keeps through the server's own encodes (bits of 48; chance is about 24): PNG and each lossy
# format at its default quality and at the lowest quality it is called robust at, on the sample room and two
# photographs. At the time of writing it keeps 46-48 of 48 on every one; SDXL's dwtDct kept 21 through any of them.
WATERMARK_SAMPLES = [
    "examples/room.png",
    "pipelines/evaluation/suite/astronaut.jpg",
    "pipelines/evaluation/suite/cup_studio.jpg",
]
ROBUST_ENCODES = [("png", 95), ("jpeg", 95), ("jpeg", WATERMARK_ROBUST_FROM["jpeg"]), ("webp", 95)]
ROBUST_ENCODES += [("webp", WATERMARK_ROBUST_FROM["webp"])]


@pytest.mark.parametrize("sample", WATERMARK_SAMPLES)
def test_the_watermark_survives_the_lossy_encodes_it_is_called_robust_to(sample):
    image = Image.open(Path(__file__).resolve().parents[2] / sample).convert("RGB")
    marks = Provenance(watermark=True)
    marked = marks.mark_pixels(image)
    kept = {}
    for image_format, quality in ROBUST_ENCODES:
        assert marks.watermark_note(image.size, image_format, quality).startswith("dwtDctSvd")
        kept[image_format, quality] = watermark_bits(
            Image.open(io.BytesIO(encode_image(marked, image_format, quality)))
        )
    assert all(bits >= WATERMARK_FOUND for bits in kept.values()), kept
    assert watermark_bits(Image.open(io.BytesIO(encode_image(image, "jpeg", 95)))) < WATERMARK_FOUND


def test_an_output_below_the_robust_quality_says_so_in_its_record_and_the_start_says_it_once(caplog):
    configured.cache_clear()
    with caplog.at_level("WARNING", logger="segswap"):
        settings = Settings(api_keys=[KEY], watermark=True)
        weak = read(
            Image.open(io.BytesIO(post(settings, {**swap_body(), "image_format": "webp", "image_quality": 60})))
        )
        strong = read(Image.open(io.BytesIO(post(settings, {**swap_body(), "image_format": "jpeg"}))))
    assert weak["watermark"] == "not robust to webp q60"
    assert strong["watermark"] == "dwtDctSvd on U at 64"
    assert caplog.text.count("watermark: not robust to jpeg below quality 50 or webp below quality 80") == 1
    assert "watermark" not in read(Image.open(io.BytesIO(post(Settings(api_keys=[KEY]), swap_body()))))
