"""What made an output, carried inside the output file: the contract's fields (no images), the sha256 of each
input image as it arrived, the seed, the engine and the model set that ran (in the parameters, as `model_set`),
its pinned revisions (when the files loaded are the pinned ones, else "unverified local files"), the LoRA a
request named with the sha256 of its file, and segswap's version.

PNG keeps it as an iTXt chunk, JPEG and WEBP as an XMP packet, both under the name `segswap` and as JSON. No
clock time and nothing about the caller goes in: the same inputs on the same engine give the same bytes, so
`segswap swap --replay` can reproduce a file exactly. `SEGSWAP_OUTPUT_METADATA=false` leaves it out.
"""

from __future__ import annotations

import hashlib
import json
import logging
from functools import cache
from xml.etree import ElementTree

from PIL import Image

from pipelines import IMAGE_FIELDS
from pipelines.models.loras import lora_digest
from pipelines.models.model_sets import set_of_engine
from pipelines.models.revisions import UNVERIFIED, loaded_revisions

log = logging.getLogger("segswap")

KEY = "segswap"
JPEG_XMP_LIMIT = 65_000  # one APP1 segment holds 65,533 bytes, the XMP namespace header included
SCHEMA = 1
XMP_NS = "https://github.com/segswap/segswap/ns/1.0/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
X_NS = "adobe:ns:meta/"
# Not what made the image: the images (they go in as digests), how the answer travels, where v2 reports to.
NOT_PARAMETERS = {*IMAGE_FIELDS, "base64", "webhook_url"}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def input_digests(images: dict[str, Image.Image]) -> dict[str, str]:
    """The sha256 of each input as it arrived (decode_inputs records it on the decoded image)."""
    return {field: image.info["sha256"] for field, image in images.items() if "sha256" in image.info}


def describe(fields: dict, seed: int, engine: str, inputs: dict[str, str]) -> dict:
    """The record of one output. `fields` are the request's contract fields (a v2 job's private bookkeeping,
    keys starting with "_", is left out), `seed` the one used."""
    parameters = {
        name: value for name, value in sorted(fields.items()) if name not in NOT_PARAMETERS and not name.startswith("_")
    }
    parameters["seed"] = seed
    parameters["model_set"] = set_of_engine(engine)  # the set that ran, asked for or the default
    record = {
        "schema": SCHEMA,
        "segswap": segswap_version(),
        "engine": engine,
        "model_revisions": model_revisions(engine),
        "seed": seed,
        "parameters": parameters,
        "inputs": dict(sorted(inputs.items())),
    }
    if parameters.get("lora"):
        name = parameters["lora"]
        record["lora"] = {"name": name, "scale": parameters.get("lora_scale", 1.0), "sha256": lora_digest(engine, name)}
    return record


def output_record(enabled: bool, fields: dict, seed: int, engine: str, inputs: dict[str, str]) -> dict | None:
    """describe(...), or None where the operator turned output metadata off."""
    return describe(fields, seed, engine, inputs) if enabled else None


def model_revisions(engine: str) -> dict[str, str] | str | None:
    """The pinned Hub revision of each repository the engine's model set comes from, when the files it loaded
    are the manifest's (checked at load); else "unverified local files"; None for an engine without a model."""
    if not engine.startswith("diffusion/"):
        return None
    found = loaded_revisions(engine)
    if found is None:  # no set of that name loaded in this process: nothing checked, nothing to claim
        return UNVERIFIED
    return dict(found) if isinstance(found, dict) else found


def save_options(image_format: str, record: dict | None) -> dict:
    """The Pillow `save` arguments that carry `record` in a file of `image_format`."""
    if record is None:
        return {}
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)  # UTF-8: 1-4 bytes a char
    if image_format == "png":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_itxt(KEY, text)
        return {"pnginfo": info}
    packet = _xmp(text)
    if image_format == "jpeg" and len(packet) > JPEG_XMP_LIMIT:
        # Only with prompts of thousands of 4-byte characters: the file goes out whole, without its record.
        log.warning("the output's record (%d bytes) does not fit a JPEG's XMP segment; left out", len(packet))
        return {}
    return {"xmp": packet}


def read(image: Image.Image) -> dict | None:
    """The record an output carries, or None (not one of ours, or written with metadata off)."""
    text = image.info.get(KEY) if image.format == "PNG" else _from_xmp(image.info.get("xmp"))
    if not text:
        return None
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return record if _well_formed(record) else None


def _well_formed(record: object) -> bool:
    """Shaped as `describe` writes it (a file can carry anything under our name)."""
    if not isinstance(record, dict) or not isinstance(record.get("parameters"), dict):
        return False
    inputs, revisions = record.get("inputs"), record.get("model_revisions")
    textual = (isinstance(inputs, dict) and all(isinstance(v, str) for v in inputs.values())) and (
        revisions is None
        or isinstance(revisions, str)
        or (isinstance(revisions, dict) and all(isinstance(v, str) for v in revisions.values()))
    )
    return textual and all(isinstance(record.get(key), str) for key in ("engine", "segswap"))


def _xmp(text: str) -> bytes:
    root = ElementTree.Element(f"{{{X_NS}}}xmpmeta")
    rdf = ElementTree.SubElement(root, f"{{{RDF_NS}}}RDF")
    description = ElementTree.SubElement(rdf, f"{{{RDF_NS}}}Description")
    ElementTree.SubElement(description, f"{{{XMP_NS}}}{KEY}").text = text
    return ElementTree.tostring(root, encoding="utf-8")


def _from_xmp(packet: bytes | str | None) -> str | None:
    if not packet:
        return None
    try:
        node = ElementTree.fromstring(packet).find(f".//{{{XMP_NS}}}{KEY}")
    except ElementTree.ParseError:
        return None
    return node.text if node is not None else None


@cache
def segswap_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("segswap")
    except PackageNotFoundError:
        return "unknown"


ElementTree.register_namespace("x", X_NS)
ElementTree.register_namespace("rdf", RDF_NS)
ElementTree.register_namespace(KEY, XMP_NS)
