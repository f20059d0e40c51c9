"""A georeferenced map as a gallery source: its files, their working grid in metres, and the
tiles cut from them (windows of a ground size in metres; SPEC §5b).

A map is a GeoTIFF (COG included), a GDAL VRT, or a folder of them. Each file is cut on a
*working grid* in metres: a projected file's own grid (its CRS's units converted to metres);
a geographic one (EPSG:4326, ...) through a GDAL WarpedVRT in the UTM zone of its centre, so a
150 m tile really covers 150 m on the ground. Tiles are whole-pixel windows of that grid (their
size rounded to whole pixels, the ground size stored is the one actually covered), stepped by
`(1 - overlap)` of their size, every scale on its own grid. Positions come from the grid's
affine transform and pyproj (working CRS -> WGS84); nothing here reads pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ConfigError

MAP_EXTENSIONS = {".tif", ".tiff", ".vrt"}
MIN_TILE_PX = 8          # a tile is at least this many map pixels a side (else: refused)
# GDAL keeps read blocks in a cache of 5% of RAM by default: a big map read tile by tile would fill
# it (measured: +113 MB RSS for a 108 MB map). Tiles are read in row-major order, so a few rows of
# blocks suffice (32 MB: same read rate). Set before GDAL's first read; the user's value wins.
GDAL_CACHE_MB = 64


def bounded_gdal_cache() -> None:
    os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))


class MapError(ConfigError):
    """A map that cannot be cut as asked; the message names the file and what to change."""


@dataclass(frozen=True)
class MapFile:
    """One map file and the grid it is cut on (picklable: sent to dask workers)."""
    path: str
    crs: str                      # the working grid's CRS (WKT)
    transform: tuple              # the working grid's affine (a, b, c, d, e, f)
    width: int
    height: int
    metres_per_unit: float        # of the working CRS's linear unit
    warped: bool                  # True: read through a WarpedVRT onto the working grid
    web_tiles: bool = False       # True: a folder of web tiles, one image file per tile (web_tiles.py)

    @property
    def res_m(self) -> tuple[float, float]:
        a, _, _, _, e, _ = self.transform
        return abs(a) * self.metres_per_unit, abs(e) * self.metres_per_unit


def map_paths(path) -> list[Path]:
    """The map's files: PATH itself, or the GeoTIFF/VRT files under a folder (sorted)."""
    root = Path(str(path)).expanduser()
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in MAP_EXTENSIONS and p.is_file())
        if not files:
            raise MapError(f"map={root}: no GeoTIFF or VRT ({', '.join(sorted(MAP_EXTENSIONS))}) under it")
        return files
    if not root.is_file():
        raise MapError(f"map={root} does not exist")
    return [root]


def utm_crs_for(lon: float, lat: float):
    """The WGS84 UTM zone of a point (EPSG:326zz north, 327zz south)."""
    from rasterio.crs import CRS
    zone = int(np.clip(np.floor((lon + 180.0) / 6.0) + 1, 1, 60))
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def open_map_file(path: Path, pixels: bool = True) -> MapFile:
    """Check one file and describe its working grid; MapError says why a file cannot serve.
    pixels=False: its geometry only (a raster of another kind, never fed to the backbone)."""
    import rasterio
    from rasterio.errors import RasterioIOError
    try:
        src = rasterio.open(path)
    except RasterioIOError as e:
        raise MapError(f"map file {path} is not a raster GDAL can read ({str(e)[:200]})") from None
    with src:
        _check_source(src, path)
        if pixels:
            _check_pixels(src, path)
        if src.crs.is_geographic:
            return _warped_grid(src, path)
        units = src.crs.linear_units_factor[1]
        return MapFile(str(path), src.crs.to_wkt(), tuple(src.transform)[:6], src.width, src.height,
                       float(units), False)


def _check_source(src, path) -> None:
    if src.crs is None:
        raise MapError(f"map file {path} has no CRS: georeference it (e.g. gdal_edit.py -a_srs EPSG:XXXX)")
    if src.transform.is_identity and not src.gcps[0]:
        raise MapError(f"map file {path} has no geotransform: its pixels have no position on the ground")
    if src.transform.b != 0 or src.transform.d != 0:
        raise MapError(f"map file {path} has a rotated geotransform; warp it north-up first (gdalwarp)")


def _check_pixels(src, path) -> None:
    if src.dtypes[0] != "uint8" or src.count not in (1, 3, 4):
        raise MapError(f"map file {path}: {src.count} band(s) of {src.dtypes[0]}; maps are read as 8-bit "
                       "grey, RGB or RGBA (convert with gdal_translate -ot Byte -scale)")


def _warped_grid(src, path) -> MapFile:
    """A geographic file's grid in its centre's UTM zone, as GDAL's WarpedVRT chooses it."""
    from rasterio.vrt import WarpedVRT
    lon, lat = src.xy(src.height / 2, src.width / 2)
    with WarpedVRT(src, crs=utm_crs_for(lon, lat)) as vrt:
        return MapFile(str(path), vrt.crs.to_wkt(), tuple(vrt.transform)[:6], vrt.width, vrt.height, 1.0, True)


def open_map(path, pixels: bool = True) -> list[MapFile]:
    bounded_gdal_cache()
    try:
        import pyproj  # noqa: F401
        import rasterio  # noqa: F401
    except ImportError:
        raise MapError("maps are read with rasterio (GDAL) and pyproj: pip install 'geoalign[map]'") from None
    return [open_map_file(p, pixels) for p in map_paths(path)]


def short_crs(wkt: str) -> str:
    """A CRS as its authority code when it has one (EPSG:32632), else the sha256 of its WKT: what
    a fingerprint (and the message naming a changed map) shows."""
    import hashlib
    from pyproj import CRS
    code = CRS.from_wkt(wkt).to_authority()
    return ":".join(code) if code else "wkt-sha256:" + hashlib.sha256(wkt.encode()).hexdigest()[:16]


def map_fingerprint(files: list[MapFile]) -> list[dict]:
    """What identifies the map: each file's size and modification time, and its grid."""
    out = []
    for f in files:
        stat = Path(f.path).stat()
        out.append({"file": str(Path(f.path).resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                    "crs": short_crs(f.crs), "transform": list(f.transform), "size": [f.width, f.height],
                    "warped": f.warped})
    return out


@dataclass
class TileTable:
    """Every tile of a map, one row each (vectors, no per-tile objects)."""
    ids: list[str]
    file: np.ndarray              # (N,) int32 index into the map's files
    window: np.ndarray            # (N, 4) int64 col_off, row_off, width, height (working grid px)
    bounds: np.ndarray            # (N, 4) float64 x0, y0, x1, y1 in the file's working CRS
    centre_latlon: np.ndarray     # (N, 2) float64 WGS84
    footprint_latlon: np.ndarray  # (N, 4, 2) corners NW, NE, SE, SW, WGS84 lat/lon
    ground_m: np.ndarray          # (N,) float64 side actually covered, metres
    scale_m: np.ndarray           # (N,) float64 the tile_m asked for

    def __len__(self) -> int:
        return len(self.ids)


def _grid_windows(f: MapFile, tile_m: float, overlap: float) -> np.ndarray:
    """(n, 4) windows of one scale on one file's grid, row-major."""
    rx, ry = f.res_m
    w, h = int(round(tile_m / rx)), int(round(tile_m / ry))
    if min(w, h) < MIN_TILE_PX:
        raise MapError(f"tile_m={tile_m:g} is {min(w, h)} pixel(s) of {f.path} ({rx:.2f} x {ry:.2f} m "
                       f"per pixel); a tile needs at least {MIN_TILE_PX}: use tile_m >= {MIN_TILE_PX * max(rx, ry):.0f}")
    if w > f.width or h > f.height:
        return np.zeros((0, 4), np.int64)
    sx, sy = max(1, int(round(w * (1 - overlap)))), max(1, int(round(h * (1 - overlap))))
    rows, cols = np.meshgrid(np.arange(0, f.height - h + 1, sy), np.arange(0, f.width - w + 1, sx), indexing="ij")
    n = rows.size
    return np.stack([cols.ravel(), rows.ravel(), np.full(n, w), np.full(n, h)], axis=1).astype(np.int64)


def pixel_to_crs(f: MapFile, col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b, c, d, e, g = f.transform
    return a * col + b * row + c, d * col + e * row + g


def to_latlon(crs_wkt: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(..., 2) WGS84 lat/lon of working-CRS coordinates, through pyproj."""
    from pyproj import Transformer
    lon, lat = Transformer.from_crs(crs_wkt, "EPSG:4326", always_xy=True).transform(x, y)
    return np.stack([np.asarray(lat), np.asarray(lon)], axis=-1)


def from_latlon(crs_wkt: str, latlon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from pyproj import Transformer
    x, y = Transformer.from_crs("EPSG:4326", crs_wkt, always_xy=True).transform(latlon[..., 1], latlon[..., 0])
    return np.asarray(x), np.asarray(y)


def cut_tiles(files: list[MapFile], tile_m: list[float], overlap: float) -> TileTable:
    """The tiles of every file at every scale (file, then scale, then row-major)."""
    if not 0 <= overlap < 1:
        raise MapError(f"overlap={overlap} must be in [0, 1) (0.5: each tile steps by half its size)")
    if not tile_m or any(float(t) <= 0 for t in tile_m):
        raise MapError(f"tile_m={list(tile_m)} must be positive ground sizes in metres, e.g. [100, 150, 250]")
    parts = []
    for i, f in enumerate(files):
        for scale in tile_m:
            win = _grid_windows(f, float(scale), overlap)
            parts.append(_tile_rows(i, f, win, float(scale)))
    return TileTable(*(_concat([p[k] for p in parts]) for k in range(8)))


def _concat(items):
    return [x for item in items for x in item] if isinstance(items[0], list) else np.concatenate(items)


def _tile_rows(i: int, f: MapFile, win: np.ndarray, scale: float) -> tuple:
    col, row, w, h = (win[:, k].astype(np.float64) for k in range(4))
    x0, y0 = pixel_to_crs(f, col, row)
    x1, y1 = pixel_to_crs(f, col + w, row + h)
    cx, cy = pixel_to_crs(f, col + w / 2, row + h / 2)
    corners_x = np.stack([x0, x1, x1, x0], axis=1)
    corners_y = np.stack([y0, y0, y1, y1], axis=1)
    bounds = np.stack([np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1)], axis=1)
    stem = Path(f.path).stem
    ids = [f"{stem}/{scale:g}m/r{r:06d}c{c:06d}" for c, r in zip(win[:, 0].tolist(), win[:, 1].tolist())]
    ground = w * f.res_m[0]
    return (ids, np.full(len(win), i, np.int32), win, bounds, to_latlon(f.crs, cx, cy).reshape(-1, 2),
            to_latlon(f.crs, corners_x, corners_y).reshape(-1, 4, 2), ground, np.full(len(win), scale))
