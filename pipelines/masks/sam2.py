"""SAM 2 (transformers' Sam2Model) for boxes and points, and OWLv2 (Owlv2ForObjectDetection) turning words into
the box SAM 2 starts from. Both load from local folders only; any failure to load is a WeightsError.

SAM 2's input is prepared here rather than by transformers' Sam2Processor, which needs torchvision (a large
dependency for a resize and a normalisation): the image is resized to the processor config's square side
(1024) without keeping its aspect, scaled to 0..1 and normalised with the config's mean and std; prompts are
given in that frame. The 256 x 256 mask logits are scaled back to the image and cut at 0, as the processor's
post-processing does. OWLv2 uses its own processor (its image part has a Pillow version).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipelines.errors import InvalidInput, Stopped, WeightsError
from pipelines.imageops import to_rgb
from pipelines.masks.selector import Box, Selector, StopFn

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # transformers' SAM 2 processor defaults, used when its config is absent
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIDE = 1024
MIN_SCORE = 0.05  # the detector's best match below this is "nothing found"


class Sam2Selector:
    """Boxes and points by SAM 2; words by OWLv2's best box, then SAM 2 on it."""

    name = "sam2"

    def __init__(self, sam2_dir: Path, detector_dir: Path | None, device: torch.device):
        self.device = device
        self.model = _load(lambda: _sam2_model(sam2_dir, device), sam2_dir)
        self.side, self.mean, self.std = _sam2_preprocessing(sam2_dir)
        self.detector_dir = detector_dir
        self._detector: Detector | WeightsError | None = None  # loaded on the first words; a failure is kept
        if detector_dir is not None:
            self.name = "sam2+owlv2"

    def select(self, image: Image.Image, selector: Selector, stop: StopFn | None = None) -> np.ndarray:
        """`stop` is asked between the detector and SAM 2 (each one forward pass at a fixed input size)."""
        selector.check(image.size)
        if selector.text is not None:
            selector = Selector(box=self._detector_for_words().best_box(image, selector.text))
            if stop is not None and stop():
                raise Stopped("the selection was stopped before it ended")
        return self._segment(image, selector)

    def _detector_for_words(self) -> Detector:
        """OWLv2, loaded when words first come: a broken detector set fails words only, not boxes and points."""
        if self.detector_dir is None:
            raise InvalidInput("selecting by words needs the owlv2 model set (segswap weights download owlv2)", "text")
        if self._detector is None:
            try:
                self._detector = _load(lambda: Detector(self.detector_dir, self.device), self.detector_dir)
            except WeightsError as exc:
                self._detector = exc
        if isinstance(self._detector, WeightsError):
            raise self._detector
        return self._detector

    @torch.no_grad()
    def _segment(self, image: Image.Image, selector: Selector) -> np.ndarray:
        width, height = image.size
        scale = torch.tensor([self.side / width, self.side / height])
        inputs: dict = {"pixel_values": self._pixels(image)}
        if selector.box is not None:
            corners = torch.tensor(selector.box, dtype=torch.float32).view(2, 2) * scale
            inputs["input_boxes"] = corners.view(1, 1, 4).to(self.device)
        else:
            points = torch.tensor([(x, y) for x, y, _ in selector.points], dtype=torch.float32) * scale
            inputs["input_points"] = points.view(1, 1, -1, 2).to(self.device)
            inputs["input_labels"] = torch.tensor([[[label for *_, label in selector.points]]], device=self.device)
        # One click is ambiguous (a button, the shirt, the person): take the best of SAM 2's three guesses.
        several = selector.points is not None and len(selector.points) == 1
        output = self.model(**inputs, multimask_output=several)
        best = int(output.iou_scores[0, 0].argmax())
        logits = output.pred_masks[0, 0, best][None, None].float()
        full = torch.nn.functional.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return (full[0, 0] > 0).cpu().numpy()

    def _pixels(self, image: Image.Image) -> torch.Tensor:
        resized = to_rgb(image).resize((self.side, self.side), Image.Resampling.BILINEAR)
        array = (np.asarray(resized, dtype=np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(array).permute(2, 0, 1)[None].to(self.device, self.model.dtype)


class Detector:
    """OWLv2: the box that best matches a description."""

    def __init__(self, folder: Path, device: torch.device):
        from transformers import Owlv2ForObjectDetection, Owlv2Processor

        self.device = device
        self.processor = Owlv2Processor.from_pretrained(folder, local_files_only=True)
        self.model = Owlv2ForObjectDetection.from_pretrained(folder, local_files_only=True).to(device).eval()

    @torch.no_grad()
    def best_box(self, image: Image.Image, text: str) -> Box:
        # OWLv2 reads 16 tokens of text: a longer description is cut there, as its processor can do.
        inputs = self.processor(text=[[text]], images=to_rgb(image), return_tensors="pt", truncation=True).to(
            self.device
        )
        outputs = self.model(**inputs)
        found = self.processor.post_process_grounded_object_detection(
            outputs, target_sizes=[(image.height, image.width)], threshold=0.0
        )[0]
        for index in found["scores"].argsort(descending=True).tolist():
            box = _clipped(found["boxes"][index].tolist(), image.size)
            if float(found["scores"][index]) < MIN_SCORE:
                break
            if box is not None:
                return box
        raise InvalidInput(f"nothing in the image matches {text!r}; describe it otherwise, or select by box", "text")


def _clipped(corners: list[float], size: tuple[int, int]) -> Box | None:
    """The detector's box inside the image (its boxes may reach into the padding), or None if too thin."""
    x0, y0 = max(0, round(corners[0])), max(0, round(corners[1]))
    x1, y1 = min(size[0], round(corners[2])), min(size[1], round(corners[3]))
    return (x0, y0, x1, y1) if x1 - x0 >= 2 and y1 - y0 >= 2 else None


def _sam2_model(folder: Path, device: torch.device):
    from transformers import Sam2Model

    return Sam2Model.from_pretrained(folder, local_files_only=True).to(device).eval()


def _sam2_preprocessing(folder: Path) -> tuple[int, np.ndarray, np.ndarray]:
    """Side, mean and std from the folder's preprocessor_config.json, else transformers' SAM 2 defaults."""
    path = folder / "preprocessor_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    size = config.get("size") or {}
    side = int(size.get("height") or size.get("longest_edge") or DEFAULT_SIDE)
    mean = np.array(config.get("image_mean", IMAGENET_MEAN), np.float32)
    std = np.array(config.get("image_std", IMAGENET_STD), np.float32)
    return side, mean, std


def _load(build, folder: Path):
    from pipelines.torch_runtime import first_line, quiet_libraries

    quiet_libraries()
    try:
        return build()
    except Exception as exc:  # transformers/safetensors raise many types for bad files
        raise WeightsError(f"cannot load the model in {folder}: {first_line(exc)}") from exc
