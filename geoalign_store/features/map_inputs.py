"""What `extract dataset=map` reads: the map's files and their tiles, the listings (a folder
dataset's train split if `train_root=`, the photos, then the tiles) and the source the engine
reads tiles from, with what of the request decides the tiles (into the features' fingerprint).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import store as st
from ..datasets import (MapError, ViewListing, cut_tiles, is_web_tile_folder, list_folder, list_photos,
                        map_fingerprint, open_map, web_tile_map, web_tiles_fingerprint)
from .map_tiles import MapSource

MAP_TILE_PX = 224  # dataset=map with image_size=null: the side tiles are resampled to


class MapInputs:
    """dataset=map: the map's files, its tiles, the listings (photos if any, then tiles) and
    what of the request decides the tiles (into the features' fingerprint)."""

    def __init__(self, cfg):
        if not cfg.get("map"):
            raise MapError("dataset=map needs map=PATH (a GeoTIFF, COG, VRT, or a folder of them)")
        if cfg.image_size is None:
            cfg.image_size = MAP_TILE_PX
        tile_m = [float(t) for t in (cfg.tile_m if not isinstance(cfg.tile_m, (int, float)) else [cfg.tile_m])]
        self.web = is_web_tile_folder(cfg.map)   # each web tile is one gallery tile (files, not windows)
        if self.web:
            web_map, self.table = web_tile_map(cfg.map, str(cfg.web_scheme))
            self.files, tile_m = [web_map], sorted(set(self.table.scale_m.tolist()))
        else:
            self.files = open_map(cfg.map)
            self.table = cut_tiles(self.files, tile_m, float(cfg.overlap))
        if not len(self.table):
            raise MapError(f"no tile of tile_m={tile_m} fits in map={cfg.map}; use smaller tiles")
        n = len(self.table)
        self.tiles = ViewListing("test", "satellite", self.table.ids, np.arange(n, dtype=np.int64),
                                 np.zeros(n, bool), np.ones(n, bool))
        self.photos = list_photos(cfg.photos, self.files) if cfg.get("photos") else None
        self.photos_root = Path(str(cfg.photos)).expanduser().resolve() if self.photos else None
        # heads are fitted on a train split: a folder dataset's, extracted beside the map
        self.train_root = Path(str(cfg.train_root)).expanduser().resolve() if cfg.get("train_root") else None
        train = list_folder(self.train_root, ["train"], ["drone", "satellite"]) if self.train_root else []
        self.listings = [*train, *(x for x in (self.photos, self.tiles) if x is not None)]
        self.meta = ({"web_scheme": str(cfg.web_scheme), "tile_m": tile_m} if self.web else
                     {"tile_m": tile_m, "overlap": float(cfg.overlap), "max_nodata": float(cfg.max_nodata)})
        self.source = MapSource(tuple(self.files), float(cfg.max_nodata))

    def spec(self) -> dict:
        files = web_tiles_fingerprint(self.files[0]) if self.web else map_fingerprint(self.files)
        return {"files": files, **self.meta}

    def data_root(self, listing) -> Path:
        if listing.split == "train":
            return self.train_root
        if listing.view == "drone":
            return self.photos_root
        return Path(self.files[0].path) if self.web else Path(self.files[0].path).resolve().parent

    def write(self, group, listing) -> None:
        """The tiles' geometry, or the photos' positions (their coordinates)."""
        if listing.split == "train":
            return
        if listing.view == "satellite":
            st.write_tile_table(group, self.table, self.files, self.meta)
        else:
            latlon = np.stack([listing.extra["lat"], listing.extra["lon"]], axis=1)
            st.write_coordinates(group, latlon, "photos.csv")


