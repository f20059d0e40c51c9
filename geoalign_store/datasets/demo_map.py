"""The offline world for maps: the demo's scenes laid out on one continuous landscape, written as a
georeferenced GeoTIFF in a UTM CRS, and drone photos rendered from it by a pinhole camera with
their true positions in `photos.csv` (numpy, PIL, rasterio, pyproj; no download).

    root/map.tif            EPSG:32632 (UTM 32N), 1 m pixels, north up, `grid` x `grid` scenes
    root/photos/*.png       drone photos; photos/photos.csv: image,lat,lon,alt_m,heading_deg,pitch_deg
    root/_demo_map.json     the parameters (checked on every call)

A photo's position is the drone's own (the point under the camera, what GPS gives), not the
centre of what it sees: at 60 degrees of pitch from 300 m the camera looks ~520 m ahead.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import uuid

import numpy as np
from PIL import Image

from ..config import ConfigError, fingerprint
from .demo_scenes import _photometric, _render_world, _rng, default_demo_root
from .maps import to_latlon

FORMAT_VERSION = 1
CRS = "EPSG:32632"
ORIGIN = (500_000.0, 5_600_000.0)          # top-left corner (easting, northing), near 50.55 N, 9 E
SCENE, STRIDE = 384, 320                    # scene side and step (px = m): 64 m cross-faded seams
HAZE = np.array([199, 209, 224], np.float32)
DEFAULTS = dict(seed=0, grid=6, n_photos=48, photo_px=128, alt_m=[100.0, 300.0], pitch_deg=[0.0, 60.0],
                fov_deg=50.0)


def generate_demo_map(root=None, **params) -> pathlib.Path:
    """Write the map world to `root` (atomically) unless the same one is already there; root None:
    a folder of the demo cache named after the parameters."""
    params = {**DEFAULTS, **params}
    if root is None:
        root = default_demo_root() / f"map-{fingerprint({**params, 'format_version': FORMAT_VERSION})[:12]}"
    root = pathlib.Path(root)
    meta = root / "_demo_map.json"
    if meta.exists():
        try:
            theirs = json.loads(meta.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            theirs = {"params": f"none readable: {meta} is damaged"}
        if theirs == {"format_version": FORMAT_VERSION, "params": params}:
            return root
        raise ConfigError(f"{root} holds a demo map made with other parameters "
                          f"({theirs.get('params') if isinstance(theirs, dict) else theirs}); "
                          "use another folder or delete it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        landscape = render_landscape(params["seed"], params["grid"])
        write_geotiff(tmp / "map.tif", landscape)
        write_photos(tmp / "photos", landscape, params)
        (tmp / "_demo_map.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "params": params}))
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def render_landscape(seed: int, grid: int) -> np.ndarray:
    """(H, W, 3) uint8: grid x grid demo scenes, neighbours cross-faded over their overlap."""
    side = (grid - 1) * STRIDE + SCENE
    total = np.zeros((side, side, 3), np.float32)
    weight = np.zeros((side, side, 1), np.float32)
    ramp = np.clip((np.minimum(np.arange(SCENE), SCENE - 1 - np.arange(SCENE)) + 1) / (SCENE - STRIDE), 0, 1)
    window = (ramp[:, None] * ramp[None, :])[..., None].astype(np.float32)
    for i in range(grid * grid):
        scene = _render_world(_rng(seed, 5000 + i, 0), SCENE, SCENE // 3).astype(np.float32)
        r, c = (i // grid) * STRIDE, (i % grid) * STRIDE
        total[r:r + SCENE, c:c + SCENE] += scene * window
        weight[r:r + SCENE, c:c + SCENE] += window
    return (total / np.maximum(weight, 1e-6) + 0.5).astype(np.uint8)


def write_geotiff(path: pathlib.Path, landscape: np.ndarray) -> None:
    import rasterio
    from rasterio.transform import from_origin
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w, _ = landscape.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8", crs=CRS,
                       transform=from_origin(*ORIGIN, 1.0, 1.0), tiled=True, blockxsize=256,
                       blockysize=256, compress="deflate") as dst:
        dst.write(np.moveaxis(landscape, 2, 0))


def camera_rays(size: int, heading_deg: float, pitch_deg: float, fov_deg: float) -> np.ndarray:
    """(size, size, 3) east/north/up directions of a pinhole camera's pixel centres. Pitch 0 looks
    straight down with the image's top towards `heading` (degrees clockwise from north); pitch
    tilts the view forward, towards the heading."""
    f = (size / 2) / np.tan(np.radians(fov_deg) / 2)
    u = (np.arange(size) + 0.5 - size / 2) / f
    x, y = np.meshgrid(u, u)                     # x right, y down in the image
    psi, theta = np.radians(heading_deg), np.radians(pitch_deg)
    ahead = np.array([np.sin(psi), np.cos(psi), 0.0])
    right = np.array([np.cos(psi), -np.sin(psi), 0.0])
    forward = np.cos(theta) * np.array([0, 0, -1.0]) + np.sin(theta) * ahead
    up = np.cos(theta) * ahead + np.sin(theta) * np.array([0, 0, 1.0])
    return x[..., None] * right + (-y[..., None]) * up + forward


def ground_points(east: float, north: float, alt_m: float, rays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(easting, northing) where each ray meets flat ground; NaN for rays at or above the horizon."""
    down = -rays[..., 2]
    t = np.where(down > 1e-6, alt_m / np.where(down > 1e-6, down, 1), np.nan)
    return east + t * rays[..., 0], north + t * rays[..., 1]


def render_photo(landscape: np.ndarray, east: float, north: float, alt_m: float, heading_deg: float,
                 pitch_deg: float, fov_deg: float, size: int, rng: np.random.Generator) -> Image.Image:
    """A drone photo of the landscape (bilinear, 2x supersampled), haze beyond the map."""
    from scipy.ndimage import map_coordinates
    e, n = ground_points(east, north, alt_m, camera_rays(2 * size, heading_deg, pitch_deg, fov_deg))
    col, row = e - ORIGIN[0] - 0.5, ORIGIN[1] - n - 0.5
    h, w, _ = landscape.shape
    inside = np.isfinite(col) & (col >= 0) & (col <= w - 1) & (row >= 0) & (row <= h - 1)
    coords = np.stack([np.where(inside, row, 0), np.where(inside, col, 0)])
    bands = [map_coordinates(landscape[..., b], coords, order=1) for b in range(3)]
    image = np.where(inside[..., None], np.stack(bands, axis=-1), HAZE)
    view = Image.fromarray(np.clip(image + 0.5, 0, 255).astype(np.uint8)).reduce(2)
    return _photometric(view, rng)


def write_photos(folder: pathlib.Path, landscape: np.ndarray, p: dict) -> None:
    """`n_photos` photos from positions at least 150 m inside the map, and photos.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    side = landscape.shape[0]
    lines = ["image,lat,lon,alt_m,heading_deg,pitch_deg"]
    for k in range(p["n_photos"]):
        rng = _rng(p["seed"], 9000 + k, 0)
        east, north = ORIGIN[0] + rng.uniform(150, side - 150), ORIGIN[1] - rng.uniform(150, side - 150)
        alt, pitch, heading = rng.uniform(*p["alt_m"]), rng.uniform(*p["pitch_deg"]), rng.uniform(0, 360)
        photo = render_photo(landscape, east, north, alt, heading, pitch, p["fov_deg"], p["photo_px"], rng)
        name = f"photo-{k:03d}.png"
        photo.save(folder / name, "PNG", compress_level=1)
        lat, lon = to_latlon(CRS, np.array(east), np.array(north))
        lines.append(f"{name},{lat:.8f},{lon:.8f},{alt:.1f},{heading:.1f},{pitch:.1f}")
    (folder / "photos.csv").write_text("\n".join(lines) + "\n")
