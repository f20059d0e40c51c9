"""A map gallery's tile geometry in the store, beside the view's usual arrays:

    features/<dataset>/test/satellite/      attrs: map {files: [MapFile fields], tile_m, overlap, ...}
        latlon (N, 2) float64               tile centre, WGS84 (the view's coordinates)
        tiles/file (N,) int32               index into attrs.map.files
        tiles/window (N, 4) int64           col_off, row_off, width, height on the file's working grid
        tiles/bounds (N, 4) float64         x0, y0, x1, y1 in the file's working CRS (metres)
        tiles/footprint (N, 4, 2) float64   corners NW, NE, SE, SW, WGS84 lat/lon
        tiles/ground_m (N,) float64         side covered on the ground, metres
        tiles/scale_m (N,) float64          the tile_m the tile was cut for

Written once with the view (they are its listing: a changed map is a changed fingerprint, refused
before this point), read whole by score and locate (a few dozen bytes a tile).
"""

from __future__ import annotations

from dataclasses import asdict, fields

import numpy as np
import zarr

from ..datasets import MapFile, TileTable
from .errors import StoreError
from .layout import META_CODECS, read_meta, view_path, write_coordinates

TILE_ARRAYS = ("file", "window", "bounds", "footprint", "ground_m", "scale_m")


def write_tile_table(group: zarr.Group, table: TileTable, files: list[MapFile], meta: dict) -> None:
    """The tiles' geometry under `group` (the map's satellite view), replaced whole."""
    if "tiles" in group:
        del group["tiles"]
    n = len(table)
    values = {"file": table.file, "window": table.window, "bounds": table.bounds,
              "footprint": table.footprint_latlon, "ground_m": table.ground_m, "scale_m": table.scale_m}
    for name, array in values.items():
        group.create_array(f"tiles/{name}", shape=array.shape, dtype=array.dtype,
                           chunks=(max(1, min(n, 1 << 16)), *array.shape[1:]), compressors=META_CODECS)[:] = array
    write_coordinates(group, table.centre_latlon, "map tile centres (pyproj)")
    group.attrs["map"] = {**meta, "files": [asdict(f) for f in files]}


def is_map_view(root: zarr.Group, dataset: str) -> bool:
    path = view_path(dataset, "test", "satellite")
    return path in root and "map" in root[path].attrs


def read_map_files(root: zarr.Group, dataset: str) -> list[MapFile]:
    attrs = root[view_path(dataset, "test", "satellite")].attrs.get("map")
    if attrs is None:
        raise StoreError(f"{dataset} is not a map gallery (extract it with dataset=map map=PATH)")
    names = {f.name for f in fields(MapFile)}
    return [MapFile(**{k: (tuple(v) if k == "transform" else v) for k, v in f.items() if k in names})
            for f in attrs["files"]]


def read_tile_table(root: zarr.Group, dataset: str, rows=slice(None)) -> dict[str, np.ndarray]:
    """The tile arrays (TILE_ARRAYS and `latlon`), of `rows` (the view's row indices)."""
    group = root[view_path(dataset, "test", "satellite")]
    if "tiles" not in group:
        raise StoreError(f"{group.path} has no tile geometry (tiles/): extract it with dataset=map")
    out = {name: read_meta(group, f"tiles/{name}")[rows] for name in TILE_ARRAYS}
    out["latlon"] = read_meta(group, "latlon")[rows]
    return out
