"""Procedurally generated aerial-like cross-view demo dataset (numpy + PIL only).

Each location is a random "world" (terrain, fields, forest, water, roads, a block of buildings and
a distinctive landmark at the centre), rendered as a north-up *satellite* tile (the centre crop)
and several oblique *drone* views of the same place (perspective tilt, rotation, zoom, small
shift, lighting/colour jitter, haze, mild blur).  Every location draws from its own
``numpy.random.Generator`` seeded by ``(seed, location, stream)``, so an image never depends on
generation order or on the other parameters except ``seed`` and ``image_size`` (output is
byte-identical across runs on one platform; float rounding may differ between CPUs).

Layout (the folder-dataset layout of the pipeline)::

    root/train/satellite/<loc>/sat.png     root/train/drone/<loc>/drone-<k>.png
    root/test/satellite/<loc>/sat.png      root/test/drone/<loc>/drone-<k>.png (not distractors)
    root/_demo.json                        the parameters (checked on every call)
    root/locations.csv                     a synthetic coordinate grid (location,lat,lon)
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageFilter

from ..config import ConfigError  # a bad demo parameter or folder is the user's to fix: exit 2

__all__ = ["generate_demo", "default_demo_root", "demo_coordinates", "render_drone_view"]

FORMAT_VERSION = 1
_WORLD = 3  # world side = _WORLD * image_size: room for rotated, zoomed-out, tilted drone footprints
_TABLE = 128  # side of the per-field random lookup tables
_ROOFS = np.array([[0.62, 0.27, 0.20], [0.55, 0.55, 0.57], [0.86, 0.85, 0.80], [0.40, 0.30, 0.25],
                   [0.30, 0.38, 0.48], [0.72, 0.62, 0.46], [0.25, 0.25, 0.27], [0.45, 0.55, 0.46]],
                  np.float32)
_CROPS = np.array([[0.45, 0.55, 0.25], [0.62, 0.60, 0.32], [0.55, 0.45, 0.30], [0.35, 0.50, 0.20],
                   [0.74, 0.68, 0.44], [0.50, 0.40, 0.28]], np.float32)


def default_demo_root() -> pathlib.Path:
    """``$GEOALIGN_CACHE/demo`` if that variable is set, else ``~/.cache/geoalign/demo``."""
    cache = os.environ.get("GEOALIGN_CACHE")
    base = pathlib.Path(cache).expanduser() if cache else pathlib.Path.home() / ".cache" / "geoalign"
    return base / "demo"


def generate_demo(root: str | os.PathLike, *, seed: int = 0, n_train: int = 40, n_test: int = 40,
                  n_distractors: int = 10, drone_views: int = 6, image_size: int = 128) -> pathlib.Path:
    """Write the demo dataset to ``root`` (atomically) unless an identical one is already there.

    Raises ``ValueError`` for invalid parameters, or when ``root`` holds something else: a demo
    generated with other parameters (the message names them) or a non-demo directory.
    """
    params = _validate(seed=seed, n_train=n_train, n_test=n_test, n_distractors=n_distractors,
                       drone_views=drone_views, image_size=image_size)
    root = pathlib.Path(root)
    if _existing_matches(root, params):
        _write_locations(root, params)  # demos generated before coordinates existed gain them
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _write_dataset(tmp, params)
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # an empty directory (e.g. made by the user) is replaced
        try:
            os.replace(tmp, root)
        except OSError:  # another process published first: accept it only if it matches
            if not _existing_matches(root, params):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _validate(**params: int) -> dict[str, int]:
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {value!r}")
    params = {k: int(v) for k, v in params.items()}
    minimum = dict(seed=0, n_train=1, n_test=1, n_distractors=0, drone_views=1, image_size=32)
    for name, low in minimum.items():
        if params[name] < low:
            raise ConfigError(f"{name} must be >= {low}, got {params[name]}")
    if params["image_size"] % 16:
        raise ConfigError(f"image_size must be a multiple of 16, got {params['image_size']}")
    if params["n_train"] + params["n_test"] + params["n_distractors"] > 10_000:
        raise ConfigError("at most 10000 locations in total (4-digit location folders)")
    return params


def _existing_matches(root: pathlib.Path, params: dict[str, int]) -> bool:
    """False if ``root`` is absent or an empty directory, True if it holds this very demo."""
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return False
    try:
        meta = json.loads((root / "_demo.json").read_text())
        theirs = dict(meta["params"], format_version=meta["format_version"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{root} exists but is not a geoalign demo dataset (no valid _demo.json); "
                         "choose another root or remove it") from None
    ours = dict(params, format_version=FORMAT_VERSION)
    diff = [f"{k}: {theirs.get(k)!r} there, {v!r} requested" for k, v in ours.items() if theirs.get(k) != v]
    if diff:
        raise ConfigError(f"{root} holds a demo dataset generated with different parameters "
                         f"({'; '.join(diff)}); use another root or delete it")
    return True


def _layout(p: dict[str, int]) -> list[tuple[str, int, bool]]:
    """(split, location id, has drone views): train ids first, then test ids, distractors last."""
    train = [("train", i, True) for i in range(p["n_train"])]
    first = p["n_train"]
    test = [("test", first + i, i < p["n_test"]) for i in range(p["n_test"] + p["n_distractors"])]
    return train + test


def _write_dataset(out: pathlib.Path, p: dict[str, int]) -> None:
    layout = _layout(p)
    # locations are independent (own RNG, own files); numpy and PIL release the GIL, so threads help
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for _ in pool.map(lambda item: _write_location(out, p, *item), layout):
            pass
    locations = {s: [f"{i:04d}" for sp, i, _ in layout if sp == s] for s in ("train", "test")}
    meta = {"format": "geoalign-demo", "format_version": FORMAT_VERSION, "params": p,
            "locations": locations, "distractors": locations["test"][p["n_test"]:]}
    (out / "_demo.json").write_text(json.dumps(meta, indent=1) + "\n")
    _write_locations(out, p)


# A synthetic grid: location i sits at row i // 10, column i % 10, 200 m apart, near Zurich.
_GRID_ORIGIN, _GRID_STEP_M, _GRID_COLUMNS = (47.3700, 8.5400), 200.0, 10


def demo_coordinates(n_locations: int) -> np.ndarray:
    """(n, 2) lat/lon of demo locations 0..n-1 on the synthetic grid."""
    i = np.arange(n_locations)
    lat0, lon0 = _GRID_ORIGIN
    dlat = _GRID_STEP_M / 111_195.0
    dlon = dlat / np.cos(np.radians(lat0))
    return np.column_stack([lat0 + (i // _GRID_COLUMNS) * dlat, lon0 + (i % _GRID_COLUMNS) * dlon])


def _write_locations(out: pathlib.Path, p: dict[str, int]) -> None:
    path = out / "locations.csv"
    if path.exists():
        return
    latlon = demo_coordinates(p["n_train"] + p["n_test"] + p["n_distractors"])
    lines = ["location,lat,lon"] + [f"{i:04d},{lat:.7f},{lon:.7f}" for i, (lat, lon) in enumerate(latlon)]
    tmp = path.with_name(f".locations.csv.tmp{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def render_drone_view(loc: int, stream: int, *, seed: int = 0, image_size: int = 128) -> Image.Image:
    """A drone view of demo location `loc` from RNG stream `stream`: streams 1..drone_views are
    the dataset's own views, any larger one a new photo of the same place that no store holds."""
    world = Image.fromarray(_render_world(_rng(seed, loc, 0), _WORLD * image_size, image_size))
    return _drone_view(world, _rng(seed, loc, stream), image_size).convert("RGB")


def _write_location(out: pathlib.Path, p: dict[str, int], split: str, loc: int, with_drone: bool) -> None:
    n = p["image_size"]
    world = _render_world(_rng(p["seed"], loc, 0), _WORLD * n, n)
    c = (_WORLD * n - n) // 2
    _save(world[c:c + n, c:c + n], out / split / "satellite" / f"{loc:04d}" / "sat.png")
    world = Image.fromarray(world)
    for k in range(p["drone_views"] if with_drone else 0):
        view = _drone_view(world, _rng(p["seed"], loc, k + 1), n)
        _save(view, out / split / "drone" / f"{loc:04d}" / f"drone-{k:02d}.png")


def _rng(seed: int, loc: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, loc, stream]))


def _save(img: np.ndarray | Image.Image, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = img if isinstance(img, Image.Image) else Image.fromarray(img)
    img.convert("RGB").save(path, "PNG", compress_level=1)  # fast; PNG output is deterministic


# ----------------------------------------------------------------------------- scene rendering
def _fbm(rng: np.random.Generator, m: int, cells: int, octaves: int = 4) -> np.ndarray:
    """Smooth value noise in [0, 1]: octaves of bicubic-upsampled random grids."""
    res = min(m, 4 * cells * 2 ** (octaves - 1))
    total = np.zeros((res, res), np.float32)
    for o in range(octaves):
        grid = rng.random((cells * 2 ** o + 1,) * 2, dtype=np.float32)
        total += 0.5 ** o * np.asarray(Image.fromarray(grid).resize((res, res), Image.BICUBIC))
    if res < m:
        total = np.asarray(Image.fromarray(total).resize((m, m), Image.BICUBIC))
    lo, hi = total.min(), total.max()
    return (total - lo) / (hi - lo + 1e-6)


def _rotate(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return x * c + y * s, y * c - x * s


def _lerp(a, b, t: np.ndarray) -> np.ndarray:
    return a + (np.asarray(b, np.float32) - a) * t[..., None]


def _jitter(rng: np.random.Generator, colour, amount: float = 0.15) -> np.ndarray:
    colour = np.asarray(colour, np.float32)
    return colour * rng.uniform(1 - amount, 1 + amount, colour.shape).astype(np.float32)


def _render_world(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """One location's world, (m, m, 3) uint8, centred on its landmark.

    Pixels are handled as flat vectors so that each layer only computes on the pixels it covers.
    """
    c = np.arange(m, dtype=np.float32) - (m - 1) / 2
    x, y = (a.ravel() for a in np.meshgrid(c, c))
    img = _terrain(rng, m)
    water = _water(img, rng, x, y, m)
    spread = np.float32(rng.uniform(0.3, 0.6) * n) ** 2
    urban = 0.55 * _fbm(rng, m, 2).ravel() + 0.45 * np.exp(-(x * x + y * y) / spread)  # town centred
    urban = urban > rng.uniform(0.42, 0.6)
    _fields(img, rng, x, y, ~urban & ~water, m)
    _forest(img, rng, ~urban & ~water, m)
    sun = rng.uniform(0, 2 * np.pi)
    shadow = rng.uniform(1.5, 4.0) * np.array([np.sin(sun), np.cos(sun)])  # (rows, cols)
    img = img.reshape(m, m, 3)
    _town(img, rng, x, y, (urban & ~water).reshape(m, m), water.reshape(m, m), shadow, 0.3 * n)
    win = slice((m - n) // 2, (m + n) // 2)  # the landmark fits in the satellite tile
    _landmark(img[win, win], rng, x.reshape(m, m)[win, win], y.reshape(m, m)[win, win], n, shadow)
    img *= (0.94 + 0.12 * _fbm(rng, m, m // 4, octaves=1))[..., None]
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _terrain(rng: np.random.Generator, m: int) -> np.ndarray:
    """Grass / soil colour field, (m * m, 3); smooth, so computed at low resolution and upsampled."""
    low = min(m, 96)
    img = _lerp(_jitter(rng, [0.28, 0.42, 0.18]), _jitter(rng, [0.46, 0.52, 0.28]), _fbm(rng, low, 3))
    soil = np.clip((_fbm(rng, low, 2) - 0.55) / 0.3, 0, 1) * np.float32(rng.uniform(0.3, 1.0))
    img = _lerp(img, _jitter(rng, [0.58, 0.50, 0.36]), soil)
    up = [np.asarray(Image.fromarray(np.ascontiguousarray(img[..., i])).resize((m, m), Image.BICUBIC))
          for i in range(3)]
    return np.stack(up, axis=-1).reshape(-1, 3)


def _water(img: np.ndarray, rng: np.random.Generator, x, y, m: int) -> np.ndarray:
    kind = rng.integers(0, 3)  # 0: none, 1: river, 2: lake
    if kind == 0:
        return np.zeros(x.shape, bool)
    if kind == 1:
        u, v = _rotate(x, y, rng.uniform(0, np.pi))
        centre = rng.choice([-1, 1]) * rng.uniform(0.1, 0.35) * m
        wave = np.sin(u * np.float32(1 / rng.uniform(20, 60)) + np.float32(rng.uniform(0, 2 * np.pi)))
        mask = np.abs(v - centre - np.float32(rng.uniform(6, 25)) * wave) < rng.uniform(4, 12)
    else:
        mask = _fbm(rng, m, 2).ravel() > rng.uniform(0.7, 0.8)
    img[mask] = _jitter(rng, [0.16, 0.30, 0.40], 0.2)
    return mask


def _fields(img: np.ndarray, rng: np.random.Generator, x, y, free: np.ndarray, m: int) -> None:
    """Patchwork of striped crop fields in a rotated grid, with darker boundaries."""
    zone = np.flatnonzero(free & (_fbm(rng, m, 2).ravel() > rng.uniform(0.3, 0.6)))
    u, v = _rotate(x[zone], y[zone], rng.uniform(0, np.pi))
    fw, fh = rng.uniform(16, 48, 2).astype(np.float32)
    ru, rv = u % fw, v % fh
    key = (np.floor(u / fw).astype(np.int32) % _TABLE) * _TABLE + np.floor(v / fh).astype(np.int32) % _TABLE
    palette = _jitter(rng, _CROPS)[rng.integers(0, len(_CROPS), _TABLE * _TABLE)]
    stripes = np.where(np.take(rng.random(_TABLE * _TABLE) < 0.5, key), u, v)
    shade = 0.9 + 0.1 * np.sin(stripes * np.float32(2 * np.pi / rng.uniform(2.5, 5.0)))
    shade[(np.minimum(ru, fw - ru) < 1) | (np.minimum(rv, fh - rv) < 1)] = 0.65
    sown = np.take(rng.random(_TABLE * _TABLE) < 0.85, key)
    img[zone[sown]] = palette[key[sown]] * shade[sown, None]


def _forest(img: np.ndarray, rng: np.random.Generator, free: np.ndarray, m: int) -> None:
    zone = _fbm(rng, m, 2).ravel() > rng.uniform(0.5, 0.75)
    crowns = _fbm(rng, m, m // 10, octaves=2).ravel()
    trees = free & ((zone & (crowns > 0.45)) | (crowns > 0.82))
    img[trees] = _jitter(rng, [0.12, 0.26, 0.10], 0.2) * (0.6 + 0.7 * crowns[trees, None])


def _town(img, rng, x, y, buildable, water, shadow, clear: float) -> None:
    """Main roads (possibly curved) everywhere; a street grid and lots of buildings in town.

    No lot is built within radius ``clear`` of the centre (the landmark's plaza).
    """
    m, flat = img.shape[0], img.reshape(-1, 3)
    road = np.full(x.shape, np.inf, np.float32)
    for _ in range(rng.integers(1, 4)):
        u, v = _rotate(x, y, rng.uniform(0, np.pi))
        bend = rng.integers(0, 2) * rng.uniform(0, 30)
        wave = np.sin(u * np.float32(1 / rng.uniform(40, 120)) + np.float32(rng.uniform(0, 7)))
        road = np.minimum(road, np.abs(v - np.float32(rng.uniform(-0.3, 0.3) * m) - np.float32(bend) * wave))
    g = dict(angle=rng.uniform(0, np.pi), sp=rng.uniform(30, 52), w=rng.uniform(3, 5.5),
             off=rng.uniform(0, 52, 2), lots=int(rng.integers(1, 4)))
    g["lot"] = (g["sp"] - g["w"]) / g["lots"]
    wm = rng.uniform(5, 9)
    town = np.flatnonzero(buildable)
    u, v = _rotate(x[town], y[town], g["angle"])
    du, dv = ((t - g["off"][i] + g["sp"] / 2) % g["sp"] - g["sp"] / 2 for i, t in enumerate((u, v)))
    flat[town[np.minimum(np.abs(du), np.abs(dv)) < g["w"] / 2]] = _jitter(rng, [0.55, 0.54, 0.52], 0.1)
    flat[road < wm / 2] = _jitter(rng, [0.33, 0.33, 0.34], 0.1)
    flat[road < 0.6] = [0.85, 0.84, 0.75]
    zone = buildable & ((road > wm / 2 + 0.6 * g["lot"]) & (x * x + y * y > clear**2)).reshape(m, m)
    inside, key, ridge = _buildings(rng, g, u, v, zone)
    house = np.zeros(m * m, bool)
    house[town[inside]] = True
    house = house.reshape(m, m)
    img[np.roll(house, tuple(np.round(shadow).astype(int)), axis=(0, 1)) & ~house & ~water] *= 0.55
    roofs = _jitter(rng, _ROOFS, 0.1)[rng.integers(0, len(_ROOFS), key.max(initial=0) + 1)]
    roofs *= rng.uniform(0.8, 1.15, (len(roofs), 1)).astype(np.float32)
    flat[town[inside]] = roofs[key[inside]] * np.where(ridge[inside], 0.8, 1.0)[:, None].astype(np.float32)


def _buildings(rng, g: dict, u: np.ndarray, v: np.ndarray, zone: np.ndarray):
    """Roof mask of the lots at street-grid coordinates (u, v), each pixel's lot key, ridge side.

    Per-lot randomness lives in tables indexed by lot id modulo ``t``; ``t`` exceeds the number of
    lots across the world, so every lot has its own entry.  A lot is built only if its centre is
    in ``zone``.
    """
    m, k = zone.shape[0], g["lots"]
    t = int(2 ** np.ceil(np.log2(2 * (0.71 * m + g["sp"]) / g["lot"] + 4)))
    margin = rng.uniform(1, 0.28 * g["lot"], (4, t * t)).astype(np.float32)
    ids = np.arange(t)
    ids = np.where(ids < t // 2, ids, ids - t)  # the lot id each table slot stands for
    centre = [g["off"][i] + ids // k * g["sp"] + g["w"] / 2 + (ids % k + 0.5) * g["lot"] for i in (0, 1)]
    cx, cy = _rotate(centre[0][:, None], centre[1][None, :], -g["angle"])
    row, col = (np.clip(np.round(c + (m - 1) / 2), 0, m - 1).astype(np.int64) for c in (cy, cx))
    built = (zone[row, col] & (rng.random((t, t)) < rng.uniform(0.6, 0.95))).ravel()
    (iu, lu), (iv, lv) = _lot_coords(u, g, 0), _lot_coords(v, g, 1)
    key = (iu % t) * t + iv % t
    inside = np.take(built, key) & (lu > np.take(margin[0], key)) & (lv > np.take(margin[2], key))
    inside &= (lu < g["lot"] - np.take(margin[1], key)) & (lv < g["lot"] - np.take(margin[3], key))
    ridge = 2 * lv < np.take(margin[2] + g["lot"] - margin[3], key)
    return inside, key, ridge


def _lot_coords(t: np.ndarray, g: dict, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Global lot id and the coordinate inside the lot, along one street-grid axis."""
    sp, lot = np.float32(g["sp"]), np.float32(g["lot"])
    s = t - np.float32(g["off"][axis])
    q = s % sp - np.float32(g["w"] / 2)
    idx = np.clip(np.floor(q / lot), 0, g["lots"] - 1)
    return (np.floor(s / sp) * g["lots"] + idx).astype(np.int32), q - idx * lot


def _landmark(img, rng, x, y, n: int, shadow) -> None:
    """A distinctive central building (box, round, courtyard, L or cross) on a paved plaza."""
    angle, (a, b), kind = rng.uniform(0, np.pi), rng.uniform(0.07, 0.17, 2) * n, rng.integers(0, 5)
    u, v = _rotate(x, y, angle)
    if kind == 1:
        plaza, body = (u / a) ** 2 + (v / b) ** 2 < 1.7, (u / a) ** 2 + (v / b) ** 2 < 1
    else:
        plaza = (np.abs(u) < 1.25 * a + 3) & (np.abs(v) < 1.25 * b + 3)
        body = (np.abs(u) < a) & (np.abs(v) < b)
    if kind == 2:  # courtyard
        body &= ~((np.abs(u) < 0.5 * a) & (np.abs(v) < 0.5 * b))
    elif kind == 3:  # L shape
        body &= ~((u > 0) & (v > 0))
    elif kind == 4:  # cross
        body &= (np.abs(u) < 0.35 * a) | (np.abs(v) < 0.35 * b)
    img[plaza] = _jitter(rng, [0.68, 0.66, 0.62], 0.1)
    img[np.roll(body, tuple(np.round(1.8 * shadow).astype(int)), axis=(0, 1)) & ~body] *= 0.5
    colour = rng.uniform(0.2, 0.9, 3).astype(np.float32)
    img[body] = colour * np.where(u[body] < 0, 0.8, 1.0)[:, None].astype(np.float32)


# ----------------------------------------------------------------------------- drone views
def _perspective_coeffs(src: np.ndarray, dst: np.ndarray) -> tuple[float, ...]:
    """PIL PERSPECTIVE coefficients mapping output points ``src`` onto input points ``dst``."""
    rows, rhs = [], []
    for (px, py), (qx, qy) in zip(np.asarray(src, float), np.asarray(dst, float)):
        rows += [[px, py, 1, 0, 0, 0, -qx * px, -qx * py], [0, 0, 0, px, py, 1, -qy * px, -qy * py]]
        rhs += [qx, qy]
    return tuple(float(c) for c in np.linalg.solve(np.array(rows), np.array(rhs)))


def _drone_view(world: Image.Image, rng: np.random.Generator, n: int) -> Image.Image:
    """An oblique view: the ground footprint is a rotated trapezoid (far edge wider)."""
    m = world.width
    zoom, angle, tilt = rng.uniform(0.7, 1.3), rng.uniform(-np.pi, np.pi), rng.uniform(0.12, 0.35)
    h = n / (2 * zoom)
    far, near = -h * (1 + 0.5 * tilt), h * (1 - 0.3 * tilt)
    quad = np.array([[-h * (1 + tilt), far], [h * (1 + tilt), far],
                     [h * (1 - tilt), near], [-h * (1 - tilt), near]])
    c, s = np.cos(angle), np.sin(angle)
    quad = quad @ np.array([[c, s], [-s, c]]) + (m / 2 + rng.uniform(-0.08, 0.08, 2) * n)
    out = 2 * n  # render at 2x then box-downsample: cheap anti-aliasing for zoomed-out views
    coeffs = _perspective_coeffs([[0, 0], [out, 0], [out, out], [0, out]], quad)
    view = world.transform((out, out), Image.PERSPECTIVE, coeffs, resample=Image.BILINEAR).reduce(2)
    return _photometric(view, rng)


def _photometric(view: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Lighting, white balance, contrast, gamma (one lookup table), distance haze, noise, blur."""
    level = np.linspace(0, 1, 256)
    contrast, gain = rng.uniform(0.8, 1.15), rng.uniform(0.8, 1.2) * rng.uniform(0.92, 1.08, (3, 1))
    lut = np.clip(((level - 0.45) * contrast + 0.45) * gain, 0, 1) ** rng.uniform(0.85, 1.2)
    a = np.asarray(view.point((lut * 255 + 0.5).astype(np.uint8).ravel().tolist()), np.float32)
    haze = np.float32(rng.uniform(0, 0.3)) * np.linspace(1, 0, a.shape[0], dtype=np.float32)[:, None, None]
    a = a * (1 - haze) + haze * np.array([199, 209, 224], np.float32)
    a += np.float32(rng.uniform(1, 4)) * rng.standard_normal(a.shape, dtype=np.float32)
    out = Image.fromarray((np.clip(a, 0, 255) + 0.5).astype(np.uint8))
    radius = rng.uniform(0, 0.9)
    return out.filter(ImageFilter.GaussianBlur(radius)) if radius > 0.3 else out
