"""Image decoding for extraction, kept free of zarr/dask imports so DataLoader workers start
fast and never inherit the store's async machinery (they are spawned, not forked)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# What decoding a file that is not a (whole, sane) image raises: PIL's UnidentifiedImageError and
# "image file is truncated" (OSError), bad headers (SyntaxError, struct.error, ValueError, EOFError),
# a decompression bomb, a directory (IsADirectoryError), a mode that cannot become RGB (ValueError).
DECODE_FAILURES = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _size_hw(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def read_rgb(path: str | Path, image_size=None) -> torch.Tensor:
    """Decoded RGB, optionally bilinear-resized to (h, w): (3, H, W) uint8. Decode workers hand
    these on as they are (a quarter of float32's bytes through shared and pinned memory and the
    host-to-device copy); `normalise` runs where the backbone runs."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        hw = _size_hw(image_size)
        if hw is not None and img.size != (hw[1], hw[0]):
            img = img.resize((hw[1], hw[0]), Image.BILINEAR)
        array = np.array(img, dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1)


def normalise(pixels: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 ToTensor (/ 255) then (x - mean) / std, on the tensor's
    device. Each step is one correctly rounded float32 operation, so the result is bitwise the
    same wherever it runs (tests/test_extract.py checks it against a numpy recipe)."""
    if pixels.dtype != torch.uint8:
        raise TypeError(f"normalise expects uint8 pixels (read_rgb), got {pixels.dtype}")
    x = pixels.to(torch.float32) / 255.0
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return (x - m) / s


def load_image(path: str | Path, image_size=None, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """What the backbone sees of one image: (3, H, W) float32, normalised."""
    return normalise(read_rgb(path, image_size), mean, std)


def image_hw(path: str | Path, image_size=None) -> tuple[int, int]:
    """(H, W) the model will see, from the file header only."""
    hw = _size_hw(image_size)
    if hw is not None:
        return hw
    with Image.open(path) as img:
        return img.size[1], img.size[0]


class ImageFiles(torch.utils.data.Dataset):
    """Decodes images by flat index to uint8 (read_rgb); a failure becomes an error string, never
    an exception, so one corrupt file cannot stop a run."""

    def __init__(self, paths: list[str], image_size=None):
        self.paths, self.image_size = paths, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return index, read_rgb(self.paths[index], self.image_size), ""
        except DECODE_FAILURES as e:  # recorded, not raised: one bad file never stops a run
            return index, None, f"{type(e).__name__}: {e}"


def collate_by_shape(items) -> dict:
    """A batch as stacks of same-sized images (sizes may differ when image_size is unset)."""
    groups: dict[tuple, list] = {}
    for index, pixels, _ in items:
        if pixels is not None:
            groups.setdefault(tuple(pixels.shape), []).append((index, pixels))
    return {
        "indices": [i for i, _, _ in items],
        "errors": {i: e for i, p, e in items if p is None},
        "stacks": [([i for i, _ in g], torch.stack([p for _, p in g])) for g in groups.values()],
    }
