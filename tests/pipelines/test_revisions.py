"""What an output's record may claim of the model set that made it (pipelines/models/revisions.py): the
manifest's pinned revisions only when the set's folder holds exactly the pinned files, else "unverified local
files"."""

import hashlib
import os

from pipelines.models.model_sets import ModelSet
from pipelines.models.revisions import UNVERIFIED, loaded_revisions, note_loaded, set_revisions
from pipelines.models.weights import load_manifest

REPO, REVISION = "someone/some-model", "0123456789abcdef0123456789abcdef01234567"
FILES = {
    "base/model_index.json": b'{"_class_name": "StableDiffusionInpaintPipeline"}',
    "base/unet/w.safetensors": b"w" * 64,
}


def pinned_set(tmp_path) -> tuple[ModelSet, object]:
    """An sd15 set folder holding FILES, and a manifest pinning them by sha256."""
    entries = []
    for dest, data in FILES.items():
        (tmp_path / "sd15" / dest).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "sd15" / dest).write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        entries.append(
            f'[[sets.sd15.files]]\nrepo = "{REPO}"\nrevision = "{REVISION}"\npath = "{dest}"\ndest = "{dest}"\n'
            f'size = {len(data)}\nsha256 = "{digest}"\n'
        )
    header = 'schema = 1\n[sets.sd15]\ndescription = "d"\narch = "sd15"\nlicense = "l"\n'
    (tmp_path / "manifest.toml").write_text(header + "\n".join(entries))
    return ModelSet("sd15", tmp_path / "sd15"), load_manifest(tmp_path / "manifest.toml")


def test_the_pinned_files_give_the_manifests_revisions(tmp_path):
    model_set, manifest = pinned_set(tmp_path)
    assert set_revisions(model_set, manifest) == {REPO: REVISION}


def test_the_operators_loras_leave_the_set_verified(tmp_path):
    model_set, manifest = pinned_set(tmp_path)
    (model_set.folder / "loras").mkdir()
    (model_set.folder / "loras/style.safetensors").write_bytes(b"a LoRA a request may name")
    assert set_revisions(model_set, manifest) == {REPO: REVISION}


def test_a_changed_missing_or_extra_weight_file_is_unverified(tmp_path):
    model_set, manifest = pinned_set(tmp_path)
    weights = model_set.folder / "base/unet/w.safetensors"
    assert set_revisions(model_set, manifest) == {REPO: REVISION}  # hashed and cached
    weights.write_bytes(b"x" * 64)  # same size, new content: the cache must not answer for it
    os.utime(weights, ns=(1, 1))  # a coarse clock could have left the old mtime
    assert set_revisions(model_set, manifest) == UNVERIFIED
    weights.write_bytes(FILES["base/unet/w.safetensors"])
    assert set_revisions(model_set, manifest) == {REPO: REVISION}
    (model_set.folder / "base.safetensors").write_bytes(b"a single-file checkpoint")  # loaded instead of base/
    assert set_revisions(model_set, manifest) == UNVERIFIED
    (model_set.folder / "base.safetensors").unlink()
    weights.unlink()
    assert set_revisions(model_set, manifest) == UNVERIFIED


def test_a_set_the_manifest_does_not_name_and_a_tiny_set_are_unverified(tmp_path, tiny_weights):
    _, manifest = pinned_set(tmp_path)
    assert set_revisions(ModelSet("sdxl", tmp_path / "sdxl"), manifest) == UNVERIFIED
    assert set_revisions(ModelSet("sd15", tiny_weights / "sd15")) == UNVERIFIED  # the shipped manifest's pins
    assert note_loaded("diffusion/sd15", ModelSet("sd15", tiny_weights / "sd15")) == UNVERIFIED
    assert loaded_revisions("diffusion/sd15") == UNVERIFIED and loaded_revisions("diffusion/nothing") is None
