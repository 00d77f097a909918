"""Image decoding (PIL, runs in DataLoader workers), resizing, torch augmentations, normalisation.

No torchvision: augmentations are torch ops (flip, affine via ``affine_grid``/``grid_sample``,
brightness/contrast). Normalisation follows the ImageNet checkpoint convention (torchvision /
timm mean and std); a one-channel input uses the mean of the three channel values.
Colour: an image is decoded straight to the model's input channels: gray to RGB replicates the
channel, RGB to gray uses PIL's ITU-R 601 luma (``convert("L")``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from transfusion.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def norm_stats(in_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    if in_channels == 3:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif in_channels == 1:
        mean, std = (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    else:
        raise DataError(f"in_channels must be 1 or 3, got {in_channels}")
    return torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)


def pil_mode(in_channels: int) -> str:
    if in_channels not in (1, 3):
        raise DataError(f"in_channels must be 1 or 3, got {in_channels}")
    return "RGB" if in_channels == 3 else "L"


def resize_pil(img, size: int, fit: str):
    """Square ``size`` x ``size``: 'pad' keeps the aspect (black borders, for fundus photos),
    'stretch' resizes directly (chest X-rays, the usual CheXpert practice)."""
    from PIL import Image

    if fit == "pad" and img.width != img.height:
        side = max(img.width, img.height)
        canvas = Image.new(img.mode, (side, side), 0)
        canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        img = canvas
    elif fit not in ("pad", "stretch"):
        raise DataError(f"unknown fit {fit!r}: use 'pad' or 'stretch'")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR, reducing_gap=None)
    return img


def _bit_depth(img) -> int:
    """Bits per sample of a one-channel integer image (mode "I;16*" or "I"); ValueError if the
    file gives no fixed range (32-bit integer or floating-point samples)."""
    if img.mode.startswith("I;16"):
        return 16
    if img.mode == "I":
        bits = 16 if img.format in ("PNG", "PPM") else None  # PIL opens their 16-bit files as "I"
        tag = getattr(img, "tag_v2", None)  # TIFF: BitsPerSample
        if tag is not None and tag.get(258) is not None:
            bits = int(tuple(tag[258])[0]) if isinstance(tag[258], tuple) else int(tag[258])
        if bits == 16:
            return 16
        raise ValueError(f"{bits or 32}-bit integer samples have no fixed range to scale to [0, 1]; "
                         "convert the image to 8 or 16 bit")
    raise ValueError(f"floating-point samples (PIL mode {img.mode}) have no fixed range to scale "
                     "to [0, 1]; convert the image to 8 or 16 bit")


def _to_8bit(img):
    """A 16-bit gray image as 8-bit "L", scaled by its bit depth (value * 255 / 65535, rounded), so
    it decodes like its 8-bit version; PIL's own convert("L") would clip every value above 255."""
    from PIL import Image

    scale = 255.0 / (2 ** _bit_depth(img) - 1)
    arr = np.asarray(img).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), "L")


def _check_pixels(img) -> None:
    """PIL only warns between MAX_IMAGE_PIXELS and twice that; refuse the whole range."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.width * img.height > limit:
        raise ValueError(f"it declares {img.width}x{img.height} pixels, over PIL's decompression bomb "
                         f"limit of {limit} (PIL.Image.MAX_IMAGE_PIXELS; raise it only for a file "
                         "you trust)")


def decode_file(path: str | Path, size: int, in_channels: int, fit: str) -> np.ndarray:
    """Read one image file to uint8 (size, size, in_channels). Raises OSError/ValueError as PIL does
    (ValueError also for a decompression bomb and for samples with no fixed range). 16-bit images
    are scaled by their bit depth, not clipped."""
    from PIL import Image

    mode = pil_mode(in_channels)
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as e:
        raise ValueError(f"it declares over twice PIL's decompression bomb limit of "
                         f"{Image.MAX_IMAGE_PIXELS} pixels (PIL.Image.MAX_IMAGE_PIXELS; raise it only "
                         "for a file you trust)") from e
    with img:
        _check_pixels(img)
        if img.format == "JPEG":
            img.draft(mode, (size, size))  # decode at reduced scale when much larger than needed
        if img.mode.startswith("I") or img.mode.startswith("F"):
            img = _to_8bit(img)
        img = img.convert(mode)
        img = resize_pil(img, size, fit)
        arr = np.asarray(img, dtype=np.uint8)
    return arr.reshape(size, size, in_channels)


def decode_array(arr: np.ndarray, size: int, in_channels: int, fit: str) -> np.ndarray:
    """An in-memory uint8 image (H, W) or (H, W, 3) to uint8 (size, size, in_channels)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(arr))
    img = resize_pil(img.convert(pil_mode(in_channels)), size, fit)
    return np.asarray(img, dtype=np.uint8).reshape(size, size, in_channels)


@dataclass(frozen=True)
class Augment:
    """Random augmentation settings (all torch). Angles in degrees, translate as a fraction."""

    hflip: bool = False
    vflip: bool = False
    rotate: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    translate: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0


RETINA_AUGMENT = Augment(hflip=True, vflip=True, rotate=15.0, scale=(0.9, 1.1), translate=0.05,
                         brightness=0.1, contrast=0.1)
CHEXPERT_AUGMENT = Augment(hflip=False, rotate=7.0, scale=(0.95, 1.05), translate=0.05,
                           brightness=0.1, contrast=0.1)
NATURAL_AUGMENT = Augment(hflip=True, rotate=10.0, scale=(0.9, 1.1), translate=0.05,
                          brightness=0.1, contrast=0.1)


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


def augment_tensor(x: torch.Tensor, aug: Augment) -> torch.Tensor:
    """Apply ``aug`` to one float image (C, H, W) in [0, 1], with torch's global RNG."""
    if aug.hflip and float(torch.rand(())) < 0.5:
        x = x.flip(-1)
    if aug.vflip and float(torch.rand(())) < 0.5:
        x = x.flip(-2)
    if aug.rotate or aug.scale != (1.0, 1.0) or aug.translate:
        angle = math.radians(_uniform(-aug.rotate, aug.rotate))
        s = _uniform(*aug.scale)
        tx, ty = _uniform(-aug.translate, aug.translate) * 2, _uniform(-aug.translate, aug.translate) * 2
        cos, sin = math.cos(angle) / s, math.sin(angle) / s
        theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=x.dtype).unsqueeze(0)
        grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
        x = F.grid_sample(x.unsqueeze(0), grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)[0]
    if aug.brightness or aug.contrast:
        b = _uniform(-aug.brightness, aug.brightness)
        c = _uniform(1 - aug.contrast, 1 + aug.contrast)
        mean = x.mean()
        x = ((x - mean) * c + mean + b).clamp_(0.0, 1.0)
    return x


class ImageTransform:
    """uint8 (H, W, C) array -> normalised float32 tensor (C, H, W), augmented when asked."""

    def __init__(self, in_channels: int, augment: Augment | None):
        self.in_channels = in_channels
        self.augment = augment
        self.mean, self.std = norm_stats(in_channels)

    def __call__(self, arr: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)).permute(2, 0, 1)
        x = x.to(torch.float32).div_(255.0)
        if self.augment is not None:
            x = augment_tensor(x, self.augment)
        return (x - self.mean) / self.std
