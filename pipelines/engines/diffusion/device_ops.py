"""The image operations of a swap's last stage, as torch ops on the model's device: the pipeline's output stays
there (output_type "pt") until the finished box goes to the CPU in one transfer. Images are (3, H, W) float
tensors in 0..255; masks (H, W). The two filters with wide kernels (Gaussian blur, Sobel edges) run as
convolutions on an accelerator and through OpenCV on the CPU, whose separable filters are several times
faster there than torch's convolutions; both reflect at the edges the same way (tested to agree).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def pixels(image, device) -> torch.Tensor:
    """A PIL image or numpy RGB array (H, W, 3), or a pipeline's output (1, 3, H, W in 0..1), as (3, H, W)
    float 0..255 on `device`."""
    if isinstance(image, torch.Tensor):
        return (image[0] if image.ndim == 4 else image).to(device=device, dtype=torch.float32) * 255.0
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    return torch.from_numpy(np.require(array, requirements=["C", "W"])).to(device).permute(2, 0, 1).float()


def plane(values: np.ndarray, device) -> torch.Tensor:
    """A numpy map (H, W), boolean or float, as a float tensor on `device`."""
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(device)


def resize(image: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """(C, H, W) or (H, W) to `size` (width, height), antialiased when shrinking (as Pillow's filters are)."""
    flat = image.ndim == 2
    batch = image[None, None] if flat else image[None]
    if tuple(batch.shape[-2:]) != (size[1], size[0]):
        batch = F.interpolate(batch, size=(size[1], size[0]), mode=mode, antialias=True, align_corners=False)
    return batch[0, 0] if flat else batch[0]


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """(C, H, W) blurred by a Gaussian of `sigma` px, reflected at the edges (OpenCV's default border)."""
    if image.device.type == "cpu":
        return _per_channel(image, lambda plane: cv2.GaussianBlur(plane, (0, 0), sigma))
    return _convolved_blur(image, sigma)


def edge_magnitude(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """(H, W): the gradient magnitude (3x3 Sobel) of an RGB image's grey, after a Gaussian of `sigma`."""
    grey = gaussian_blur(image.mean(dim=0, keepdim=True), sigma)
    if image.device.type == "cpu":
        plane = grey[0].numpy()
        return torch.from_numpy(cv2.magnitude(cv2.Sobel(plane, cv2.CV_32F, 1, 0), cv2.Sobel(plane, cv2.CV_32F, 0, 1)))
    return _convolved_sobel(grey)


def _per_channel(image: torch.Tensor, filtered) -> torch.Tensor:
    return torch.stack([torch.from_numpy(filtered(np.ascontiguousarray(plane.numpy()))) for plane in image])


def _convolved_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = min(max(1, round(4 * sigma)), image.shape[-1] - 1, image.shape[-2] - 1)  # OpenCV's 4 sigma for floats
    offsets = torch.arange(-radius, radius + 1, device=image.device, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma * sigma))
    kernel = (kernel / kernel.sum())[None, None]
    rows = F.conv2d(F.pad(image[:, None], (radius, radius, 0, 0), mode="reflect"), kernel[..., None, :])
    return F.conv2d(F.pad(rows, (0, 0, radius, radius), mode="reflect"), kernel[..., :, None])[:, 0]


def _convolved_sobel(grey: torch.Tensor) -> torch.Tensor:
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=grey.device)
    padded = F.pad(grey[None], (1, 1, 1, 1), mode="reflect")
    gradients = F.conv2d(padded, torch.stack([sobel, sobel.T])[:, None])
    return torch.linalg.vector_norm(gradients[0], dim=0)


def match_to(image: torch.Tensor, reference: torch.Tensor, where: torch.Tensor, max_gain: float = 1.25):
    """`image` with a per-channel gain and offset that make its pixels under `where` match `reference`'s there
    (mean and spread; the gain within 1/max_gain..max_gain). Unchanged if `where` is empty."""
    if not bool(where.any()):
        return image
    ours, theirs = image[:, where], reference[:, where]
    spread = lambda values: values.std(dim=1, correction=0) + 1e-3  # noqa: E731
    gain = (spread(theirs) / spread(ours)).clamp(1.0 / max_gain, max_gain)[:, None, None]
    return ((image - ours.mean(dim=1)[:, None, None]) * gain + theirs.mean(dim=1)[:, None, None]).clamp(0.0, 255.0)
