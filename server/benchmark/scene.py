"""The bench's scene: a photo-like image, a centred mask and an object, served over loopback HTTP so a
request's fetch runs as the server runs it."""

from __future__ import annotations

import dataclasses
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image, ImageDraw

from pipelines import SwapJob

PROMPT = "a red summer dress with a small floral pattern"


NEGATIVE_PROMPT = "blurry, low quality"


@dataclasses.dataclass
class Inputs:
    main: Image.Image
    mask: Image.Image
    object: Image.Image

    def job(self, prompt: str, negative: str, steps: int, seed: int, guidance: float) -> SwapJob:
        return SwapJob(
            main_image=self.main,
            mask_image=self.mask,
            object_image=self.object,
            prompt=prompt,
            negative_prompt=negative,
            steps=steps,
            seed=seed,
            guidance_scale=guidance,
        )

    def encoded(self) -> dict[str, bytes]:
        from server.inputs.encode import encode_image

        return {f"/{name}.png": encode_image(getattr(self, name), "png", 95) for name in ("main", "mask", "object")}


def sample_inputs(size: int, mask_side: int | None = None, seed: int = 0) -> Inputs:
    """A photo-like scene (smooth noise), a centred mask (ellipse half the side, or a mask_side square), an object."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), "RGB").resize(
        (size, size), Image.Resampling.BICUBIC
    )
    grain = rng.integers(-12, 13, (size, size, 3))
    main = Image.fromarray(np.clip(np.asarray(coarse, dtype=np.int16) + grain, 0, 255).astype(np.uint8), "RGB")
    mask = Image.new("L", (size, size), 0)
    if mask_side:
        low = (size - mask_side) // 2
        ImageDraw.Draw(mask).rectangle((low, low, low + mask_side - 1, low + mask_side - 1), fill=255)
    else:
        ImageDraw.Draw(mask).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=255)
    obj = Image.new("RGBA", (384, 512), (0, 0, 0, 0))
    draw = ImageDraw.Draw(obj)
    draw.ellipse((8, 8, 375, 503), fill=(200, 30, 40, 255))
    for y in range(24, 500, 48):
        for x in range(24, 370, 48):
            draw.ellipse((x, y, x + 16, y + 16), fill=(250, 240, 200, 255))
    return Inputs(main, mask, obj)


class ImageServer:
    """Serves the encoded inputs on 127.0.0.1, so fetching goes through server.inputs.fetch as a URL request does."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files

    def __enter__(self) -> ImageServer:
        files = self.files

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = files.get(self.path, b"")
                self.send_response(200 if self.path in files else 404)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
