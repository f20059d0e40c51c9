"""Small synthetic fixtures built in code: image folders and a private model cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session", autouse=True)
def geoalign_cache(tmp_path_factory) -> Path:
    """Random backbones and the demo data are cached per test session, never in ~/.cache."""
    path = tmp_path_factory.mktemp("geoalign_cache")
    os.environ["GEOALIGN_CACHE"] = str(path)
    return path


def smooth_image(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """Low-frequency colour noise: structured enough that descriptors differ between images."""
    coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
    noise = rng.integers(-12, 13, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=int) + noise, 0, 255).astype(np.uint8))


def make_folder_dataset(root: Path, n_locations: int = 4, drones: int = 3, distractors: int = 1,
                        size: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
    """<root>/<split>/<view>/<loc>/*.png: train and test, distractor satellites in test."""
    rng = np.random.default_rng(seed)
    h, w = size
    for split, first in (("train", 0), ("test", 100)):
        for loc in range(first, first + n_locations + (distractors if split == "test" else 0)):
            sat = root / split / "satellite" / f"{loc:04d}"
            sat.mkdir(parents=True, exist_ok=True)
            smooth_image(rng, h, w).save(sat / "sat.png")
            if loc < first + n_locations:
                drone = root / split / "drone" / f"{loc:04d}"
                drone.mkdir(parents=True, exist_ok=True)
                for k in range(drones):
                    smooth_image(rng, h, w).save(drone / f"view-{k:02d}.png")
    return root


@pytest.fixture(scope="session")
def folder_dataset(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("folder_dataset"))


def extract_overrides(store: Path, data_root: Path, *extra: str) -> list[str]:
    return [f"store={store}", "dataset=folder", f"data_root={data_root}", "block_size=4",
            "batch_size=3", "num_workers=0", *extra]
