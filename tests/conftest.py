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


def write_plain_store(path: Path, dataset: str = "mine", n_loc: int = 30, drones: int = 4,
                      distractors: int = 5, dim: int = 16, noise: float = 0.8, seed: int = 0,
                      altitudes: tuple = ()) -> Path:
    """A store written with plain zarr only, as a user with descriptors of their own would:
    no config, no fingerprint, only ids/labels/(flags)/layer_<k>/desc of test drone/satellite."""
    import zarr
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_loc + distractors, dim))
    root = zarr.open_group(str(path), mode="a")
    sat_labels = np.arange(n_loc + distractors)
    per_alt = max(1, len(altitudes))
    drone_labels = np.repeat(np.arange(n_loc), drones * per_alt)
    views = {"satellite": (sat_labels, centres), "drone": (drone_labels, centres[drone_labels])}
    for view, (labels, base) in views.items():
        group = root.require_group(f"features/{dataset}/test/{view}")
        group.create_array("ids", shape=(len(labels),), dtype=str)[:] = np.array(
            [f"{view}/{i}.png" for i in range(len(labels))], dtype=object)
        group.create_array("labels", shape=(len(labels),), dtype="int64")[:] = labels
        for layer in (26, 28):
            desc = base + noise * rng.standard_normal(base.shape)
            group.create_array(f"layer_{layer}/desc", shape=desc.shape, dtype="float32")[:] = desc
        if view == "drone" and altitudes:
            alt = np.tile(np.repeat(np.array(altitudes), drones), n_loc)
            group.create_array("extra/altitude", shape=alt.shape, dtype="int64")[:] = alt
    return path


def write_train_split(path: Path, dataset: str = "mine", n_loc: int = 24, drones: int = 3,
                      dim: int = 40, group_ids=None, seed: int = 1) -> Path:
    """train/{satellite,drone} in plain zarr: satellites labelled 0..n-1, drone rows grouped
    by flight (`group_ids`, default the satellite's id), a fixed distortion between views."""
    import zarr
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_loc, dim))
    mix = np.eye(dim) + 0.3 * rng.standard_normal((dim, dim))
    group_ids = np.arange(n_loc) if group_ids is None else np.asarray(group_ids)
    root = zarr.open_group(str(path), mode="a")
    drone_base = np.tanh(centres @ mix)[np.repeat(np.arange(n_loc), drones)]
    views = {"satellite": (np.arange(n_loc), centres), "drone": (np.repeat(group_ids, drones), drone_base)}
    for view, (labels, base) in views.items():
        group = root.require_group(f"features/{dataset}/train/{view}")
        group.create_array("ids", shape=(len(labels),), dtype=str)[:] = np.array(
            [f"train/{view}/{i}.png" for i in range(len(labels))], dtype=object)
        group.create_array("labels", shape=(len(labels),), dtype="int64")[:] = labels
        for layer in (26, 28):
            desc = base + 0.2 * rng.standard_normal(base.shape)
            desc /= np.linalg.norm(desc, axis=1, keepdims=True)
            group.create_array(f"layer_{layer}/desc", shape=desc.shape, dtype="float32")[:] = desc
    return path
