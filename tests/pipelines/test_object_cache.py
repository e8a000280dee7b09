"""Cut-outs and reference images of recent objects, kept by content digest (pipelines/placement/cache.py)."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

import pipelines.placement.cache as cache_module
from pipelines.engines.composite import CompositeEngine
from pipelines.placement.cache import ImageCache
from tests.pipelines.jobs import diffusion_job


def photo_without_alpha(seed: int = 0) -> Image.Image:
    """An object on a busy backdrop, no alpha: the cut-out has to work for it."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (160, 120, 3), dtype=np.uint8), "RGB")
    ImageDraw.Draw(image).ellipse((25, 30, 95, 130), fill=(200, 30, 30))
    return image


@pytest.fixture()
def counted_cut_outs(monkeypatch) -> list:
    calls = []
    real = cache_module.cut_out
    monkeypatch.setattr(cache_module, "cut_out", lambda image: calls.append(1) or real(image))
    return calls


def test_the_same_object_content_is_cut_out_once(counted_cut_outs):
    engine, uncached = CompositeEngine(), CompositeEngine(object_cache_bytes=0)
    first = engine.swap(diffusion_job(object_image=photo_without_alpha()))
    again = engine.swap(diffusion_job(object_image=photo_without_alpha()))  # another upload of the same file
    assert len(counted_cut_outs) == 1 and (engine.objects.hits, engine.objects.misses) == (1, 1)
    assert first.tobytes() == again.tobytes()
    assert uncached.swap(diffusion_job(object_image=photo_without_alpha())).tobytes() == first.tobytes()
    engine.swap(diffusion_job(object_image=photo_without_alpha(seed=1)))  # other content: cut out again
    assert len(counted_cut_outs) == 3  # the uncached engine's and the new object's


def test_the_cache_is_bounded_in_bytes_and_drops_the_least_recently_used():
    cache = ImageCache(max_bytes=3 * 100 * 100 * 4)
    made = []

    def image(value: int):
        return lambda: made.append(value) or Image.new("RGBA", (100, 100), (value, 0, 0, 255))

    for value in (1, 2, 3):
        cache.get(value, image(value))
    cache.get(1, image(1))  # a hit: 1 is now the most recent
    cache.get(4, image(4))  # over the bound: 2, the least recent, goes
    assert cache.bytes <= cache.max_bytes and len(cache) == 3
    cache.get(1, image(1))
    cache.get(2, image(2))
    assert made == [1, 2, 3, 4, 2]
    assert ImageCache(max_bytes=100).get("big", image(9)).size == (100, 100) and len(ImageCache(100)) == 0


def test_callers_get_copies():
    cache = ImageCache()
    first = cache.get("red", lambda: Image.new("RGB", (4, 4), (255, 0, 0)))
    first.paste((0, 0, 255), (0, 0, 4, 4))
    assert cache.get("red", lambda: Image.new("RGB", (4, 4))).getpixel((0, 0)) == (255, 0, 0)


def test_diffusion_engines_keep_cut_out_and_reference(tiny_weights, counted_cut_outs):
    pytest.importorskip("diffusers")
    from pipelines.engines.diffusion.engine import DiffusionEngine
    from pipelines.engines.diffusion.options import DiffusionOptions
    from pipelines.models.model_sets import ModelSet

    model_set = ModelSet("sd15", tiny_weights / "sd15")
    engine = DiffusionEngine(model_set)
    job = diffusion_job(object_image=photo_without_alpha())
    first = engine.swap(job)
    assert engine.swap(diffusion_job(object_image=photo_without_alpha())).tobytes() == first.tobytes()
    assert len(counted_cut_outs) == 1 and engine.objects.hits == 2  # the cut-out and the reference
    uncached = DiffusionEngine(model_set, DiffusionOptions(object_cache_bytes=0, embed_cache_size=0))
    assert uncached.swap(job).tobytes() == first.tobytes()


def test_the_setting_reaches_every_engine(monkeypatch, tmp_path):
    from pipelines import load_engine
    from server.settings import Settings

    monkeypatch.setenv("SEGSWAP_OBJECT_CACHE_BYTES", "12345")
    options = Settings().diffusion_options("cpu")
    assert options.object_cache_bytes == 12345
    assert load_engine("composite", tmp_path, options=options).engine.objects.max_bytes == 12345
