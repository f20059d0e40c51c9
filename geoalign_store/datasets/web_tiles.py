"""A local folder of web tiles (`{z}/{x}/{y}.png|jpg`, XYZ or TMS numbering) as a map: each file
is one gallery tile, its bounds from morecantile's WebMercatorQuad.

Web Mercator stretches the ground by 1 / cos(latitude), so a tile's side in its own metres is
not its side on the ground: a z18 tile spans 152.9 Web-Mercator metres everywhere, about 97 m of
ground at 50.5 N. The ground size stored is the corrected one (side x cos(latitude of the tile's
centre)); containment (score's rule) is tested in Web-Mercator metres, where the tiles are exact
rectangles. Every zoom level present is one scale of the gallery.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from .maps import MapError, MapFile, TileTable, short_crs, to_latlon

WEB_TILE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp"}
WEB_MERCATOR = "EPSG:3857"
SCHEMES = ("xyz", "tms")


def find_web_tiles(root: Path) -> list[tuple[int, int, int, str]]:
    """(z, x, y as named, path relative to root) of every `<z>/<x>/<y>.<ext>` under root, sorted."""
    found = []
    for z_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
        for x_dir in sorted(p for p in z_dir.iterdir() if p.is_dir() and p.name.isdigit()):
            for f in sorted(x_dir.iterdir()):
                if f.suffix.lower() in WEB_TILE_EXTENSIONS and f.stem.isdigit():
                    found.append((int(z_dir.name), int(x_dir.name), int(f.stem), f"{z_dir.name}/{x_dir.name}/{f.name}"))
    return found


def is_web_tile_folder(path) -> bool:
    root = Path(str(path)).expanduser()
    return root.is_dir() and bool(find_web_tiles(root))


def web_tile_map(path, scheme: str = "xyz") -> tuple[MapFile, TileTable]:
    """The folder as one MapFile (the Web-Mercator grid of its finest zoom over the tiles present)
    and its tiles, in the folder's sorted order."""
    import morecantile
    from pyproj import CRS
    if scheme not in SCHEMES:
        raise MapError(f"web_scheme={scheme!r}: web tiles are numbered xyz (y from the north) or tms (from the south)")
    root = Path(str(path)).expanduser()
    items = find_web_tiles(root)
    grid = morecantile.tms.get("WebMercatorQuad")
    tiles = [morecantile.Tile(x, (2 ** z - 1 - y) if scheme == "tms" else y, z) for z, x, y, _ in items]
    bounds = np.array([tuple(grid.xy_bounds(t)) for t in tiles], np.float64)      # left, bottom, right, top
    lonlat = np.array([tuple(grid.bounds(t)) for t in tiles], np.float64)         # west, south, east, north
    centre = to_latlon(WEB_MERCATOR, (bounds[:, 0] + bounds[:, 2]) / 2, (bounds[:, 1] + bounds[:, 3]) / 2)
    w, s, e, n = lonlat.T
    footprint = np.stack([np.stack([n, w], 1), np.stack([n, e], 1), np.stack([s, e], 1), np.stack([s, w], 1)], axis=1)
    ground = (bounds[:, 2] - bounds[:, 0]) * np.cos(np.radians(centre[:, 0]))
    zoom = np.array([z for z, *_ in items])
    scale = np.zeros(len(items))
    for z in np.unique(zoom):  # a zoom's scale: its median ground size, to the decimetre
        scale[zoom == z] = round(float(np.median(ground[zoom == z])), 1)
    res = float((bounds[:, 2] - bounds[:, 0]).min()) / 256
    x0, y1 = bounds[:, 0].min(), bounds[:, 3].max()
    width, height = math.ceil((bounds[:, 2].max() - x0) / res), math.ceil((y1 - bounds[:, 1].min()) / res)
    f = MapFile(str(root.resolve()), CRS.from_user_input(WEB_MERCATOR).to_wkt(), (res, 0.0, x0, 0.0, -res, y1),
                width, height, 1.0, False, web_tiles=True)
    table = TileTable([rel for *_, rel in items], np.zeros(len(items), np.int32), np.zeros((len(items), 4), np.int64),
                      bounds, centre, footprint, ground, scale)
    return f, table


def web_tiles_fingerprint(f: MapFile) -> list[dict]:
    """What identifies the folder (as maps.map_fingerprint does a file): the sha256 of its listing,
    every tile's name, size and modification time."""
    root = Path(f.path)
    digest = hashlib.sha256()
    for *_, rel in find_web_tiles(root):
        stat = (root / rel).stat()
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return [{"folder": f.path, "listing_sha256": digest.hexdigest(), "crs": short_crs(f.crs)}]
