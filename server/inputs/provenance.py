"""Marking outputs as made by a generative model (what the EU AI Act's Article 50 asks of operators); off unless
the operator configures it.

- C2PA content credentials (c2pa-python): a manifest saying the image was created as a composite with a trained
  model and its masked region re-generated, signed with the operator's certificate chain and key
  (`SEGSWAP_C2PA_CERT`, `SEGSWAP_C2PA_KEY`, `SEGSWAP_C2PA_ALG`, optionally a timestamp authority). The
  signature carries the signing time, so signed outputs are not byte-identical from one run to the next.
- An invisible watermark, `SEGSWAP_WATERMARK=true`: SDXL's 48-bit message, embedded by invisible-watermark's
  DWT-DCT-SVD rule in the blue-difference (U) channel at step 64, and read back with its decoder. SDXL's own
  method (DWT-DCT at 36) kept no more bits than chance through any lossy encode the server writes; this one
  keeps them through PNG, JPEG from quality 50 and WEBP from quality 80 (tests/server/test_provenance.py
  measures it). An output written below those qualities says in its record that its mark is not robust, and
  the start-up log says so once. It changes every pixel's colour slightly (about 2 grey levels on average,
  a PSNR near 36 dB), so with it the pixels outside the mask are no longer the input's own; images under
  256x256 are left unmarked (too small for the method). `segswap info` reports both marks.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from server.inputs.files import UnreadableFile, printable, read_file

log = logging.getLogger("segswap")

# The 48-bit message SDXL's watermarker embeds (diffusers' StableDiffusionXLWatermarker).
WATERMARK_MESSAGE = 0b101100111110110010010000011110111011000110011110
WATERMARK_BITS = [int(bit) for bit in f"{WATERMARK_MESSAGE:048b}"]
WATERMARK_MIN_SIDE = 256
# invisible-watermark's method and its scales (Y, U, V): the U channel only, so the mark is a colour change
# that JPEG and WEBP keep better than the brightness detail they spend their bits on.
WATERMARK_METHOD, WATERMARK_SCALES = "dwtDctSvd", (0, 64, 0)
# The lowest quality at which each lossy format keeps the mark (at least 46 of 48 bits on every example and
# evaluation photo; JPEG q40 and WEBP q60 lost it on some): below it an output's mark is not to be relied on.
WATERMARK_ROBUST_FROM = {"jpeg": 50, "webp": 80}
PEM_MAX_BYTES = 2**20  # a certificate chain or a key is a few kilobytes
# Of 48 bits: an unmarked image matches about half by chance, 40 or more about once in a million; a marked one
# loses a few bits where strong colours clip in the method's YUV round trip.
WATERMARK_FOUND = 40
IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@dataclass(frozen=True)
class Provenance:
    """What an operator configured: a C2PA signer (or None) and whether to watermark."""

    signer: object | None = None
    watermark: bool = False

    @property
    def active(self) -> bool:
        return self.signer is not None or self.watermark

    def mark_pixels(self, image: Image.Image) -> Image.Image:
        if not self.watermark or min(image.size) < WATERMARK_MIN_SIDE:
            return image
        return Image.fromarray(_embed_watermark(np.asarray(image.convert("RGB"))), "RGB")

    def watermark_note(self, image_size: tuple[int, int], image_format: str, quality: int) -> str | None:
        """What an output's record says of its watermark: None when watermarking is off."""
        if not self.watermark:
            return None
        if min(image_size) < WATERMARK_MIN_SIDE:
            return f"none: smaller than {WATERMARK_MIN_SIDE} pixels a side"
        if quality < WATERMARK_ROBUST_FROM.get(image_format, 0):
            return f"not robust to {image_format} q{quality}"
        return f"{WATERMARK_METHOD} on U at {WATERMARK_SCALES[1]}"

    def sign(self, data: bytes, image_format: str, version: str) -> bytes:
        if self.signer is None:
            return data
        import c2pa

        builder = c2pa.Builder(json.dumps(_manifest(version)))
        destination = io.BytesIO()
        builder.sign(self.signer, MEDIA_TYPES[image_format], io.BytesIO(data), destination)
        return destination.getvalue()


def _embed_watermark(rgb: np.ndarray) -> np.ndarray:
    """invisible-watermark's DWT-DCT-SVD embedding, all blocks at once: in each 4x4 block of the U channel's
    Haar approximation, the DCT's largest singular value moves to the middle of the upper or lower half of its
    step of WATERMARK_SCALES[1], for a 1 or a 0 bit, the bits in turn. Its decoder reads this mark as it reads
    its own. Not its encoder: that writes the new channel into 8-bit integers unrounded and unclipped (a
    saturated colour wraps round) with the detail bands swapped, and runs a Python loop per block (10x slower)."""
    import cv2
    import pywt

    scale = WATERMARK_SCALES[1]
    yuv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV)  # the decoder's BGR2YUV of the same pixels
    rows, cols = yuv.shape[0] // 4 * 4, yuv.shape[1] // 4 * 4
    approximation, details = pywt.dwt2(yuv[:rows, :cols, 1].astype(np.float64), "haar")
    height, width = approximation.shape[0] // 4, approximation.shape[1] // 4
    region = approximation[: height * 4, : width * 4]
    blocks = region.reshape(height, 4, width, 4).transpose(0, 2, 1, 3).reshape(-1, 4, 4)
    u, s, vt = np.linalg.svd(_DCT4 @ blocks @ _DCT4.T)
    bits = np.resize(np.array(WATERMARK_BITS), len(blocks))
    s[:, 0] = (s[:, 0] // scale + 0.25 + 0.5 * bits) * scale
    blocks = _DCT4.T @ (u * s[:, None, :]) @ vt @ _DCT4
    region[:] = blocks.reshape(height, width, 4, 4).transpose(0, 2, 1, 3).reshape(height * 4, width * 4)
    yuv[:rows, :cols, 1] = np.clip(np.rint(pywt.idwt2((approximation, details), "haar")), 0, 255)
    return cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB)


def _dct_matrix(size: int) -> np.ndarray:
    """The orthonormal DCT-II as a matrix (what cv2.dct computes on one block)."""
    k, n = np.arange(size)[:, None], np.arange(size)[None, :]
    matrix = np.sqrt(2 / size) * np.cos(np.pi * (2 * n + 1) * k / (2 * size))
    matrix[0] /= np.sqrt(2)
    return matrix


_DCT4 = _dct_matrix(4)


def _manifest(version: str) -> dict:
    return {
        "claim_generator_info": [{"name": "segswap", "version": version}],
        "title": "segswap output",
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [
                        {  # C2PA asks for created (or opened) first
                            "action": "c2pa.created",
                            "digitalSourceType": IPTC + "compositeWithTrainedAlgorithmicMedia",
                            "softwareAgent": {"name": "segswap", "version": version},
                        },
                        {
                            "action": "c2pa.edited",
                            "digitalSourceType": IPTC + "trainedAlgorithmicMedia",
                            "description": "the masked region re-generated by a generative image model",
                        },
                    ]
                },
            }
        ],
    }


@cache
def configured(cert: Path | None, key: Path | None, alg: str, tsa_url: str | None, watermark: bool) -> Provenance:
    """The Provenance for these settings (the signer is built once); a ValueError naming what is wrong."""
    signer = None
    if cert is not None and key is not None:
        import c2pa

        tsa = tsa_url.encode() if tsa_url else None
        info = c2pa.C2paSignerInfo(alg.encode(), _pem(cert, "certificate"), _pem(key, "key"), tsa)
        try:
            signer = c2pa.Signer.from_info(info)
            Provenance(signer).sign(_tiny_png(), "png", "check")  # the signer only fails when it signs: try it now
        except c2pa.C2paError as exc:
            raise ValueError(f"the C2PA certificate and key cannot sign: {exc}") from None
    if watermark:
        import imwatermark  # noqa: F401  (fail at start-up, not on the first image, when it is not installed)

        floors = " or ".join(f"{name} below quality {quality}" for name, quality in WATERMARK_ROBUST_FROM.items())
        log.warning("watermark: not robust to %s; such outputs say so in their record", floors)
    return Provenance(signer, watermark)


def _pem(path: Path, what: str) -> bytes:
    """A certificate or key file's bytes; a ValueError of one line when it is not a small regular file that
    its permissions let someone read (running as root would read a mode-000 key)."""
    try:
        data = read_file(path, PEM_MAX_BYTES)
        if not path.stat().st_mode & 0o444:
            raise UnreadableFile(f"{printable(str(path))}: its permissions let no one read it")
    except UnreadableFile as exc:
        raise ValueError(f"the C2PA {what} cannot be read: {exc}") from None
    return data


def _tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    return buffer.getvalue()


def provenance_for(settings) -> Provenance:
    """The operator's marks, as the settings configure them (server.settings.Settings)."""
    return configured(
        settings.c2pa_cert, settings.c2pa_key, settings.c2pa_alg, settings.c2pa_tsa_url, settings.watermark
    )


def credentials(data: bytes, media_type: str) -> dict | None:
    """The active C2PA manifest's claim: who signed, the actions stated, the validation problems; None without one."""
    import c2pa

    try:
        store = json.loads(c2pa.Reader(media_type, io.BytesIO(data)).json())
    except c2pa.C2paError:
        return None
    manifest = store["manifests"][store["active_manifest"]]
    actions = [
        action
        for assertion in manifest.get("assertions", [])
        if assertion["label"].startswith("c2pa.actions")
        for action in assertion["data"]["actions"]
    ]
    return {
        "signer": manifest.get("signature_info", {}),
        "claim_generator": manifest.get("claim_generator_info"),
        "actions": actions,
        "validation": [status["code"] for status in store.get("validation_status", [])],
    }


def watermark_bits(image: Image.Image) -> int | None:
    """How many of SDXL's 48 watermark bits the image carries (about 24 by chance), or None when too small."""
    if min(image.size) < WATERMARK_MIN_SIDE:
        return None
    from imwatermark import WatermarkDecoder

    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    found = WatermarkDecoder("bits", len(WATERMARK_BITS)).decode(bgr, WATERMARK_METHOD, scales=list(WATERMARK_SCALES))
    return sum(int(bit) == expected for bit, expected in zip(found, WATERMARK_BITS, strict=True))
