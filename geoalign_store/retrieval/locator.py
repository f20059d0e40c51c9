"""`Locator`: where was this drone photo taken? New images against a store's satellite gallery.

A Locator keeps the backbone, the heads and the gallery embeddings loaded, so a caller
localises many photos without reloading. It encodes images exactly as extract encoded the
store's drone images (the store's fingerprint: weights checked by sha256, layers, image size,
normalisation, GeM pooling), applies the drone branch of the heads `score heads=auto` would use,
and searches the satellite gallery: with the store's FAISS index when one is built for these
very embeddings, else with the exact streamed scan score uses.

    from geoalign_store.retrieval import Locator
    loc = Locator("geoalign-demo.zarr")
    for answer in loc.locate(["photo.jpg"]):
        print(answer["top"][0])
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from .. import store as st
from ..config import ConfigError
from ..datasets import location_of
from ..features import (AUTO, DECODE_FAILURES, EncodeOptions, ImageFiles, auto_workers,
                        decoded_batches, encode_stack, load_backbone, resolve_device, weights_fingerprint, weights_source)
from . import index as fx
from .distances import haversine_m
from .embedder import IN_MEMORY_BYTES, gallery_fingerprint, resolve_embedder
from .embeddings import DirectionSet, Side, StoredEmbeddings
from .indices import load_built
from .map_locate import REFINE_K, map_around, refine_position
from .metrics import topk_gallery


class LocateError(ConfigError):
    """A locate request that cannot be answered; the message names what to change."""


class Locator:
    def __init__(self, store, dataset=None, heads="auto", weights=None, device="auto", k: int = 5,
                 fusion=True, fusion_weight="auto", layers=None, precision="auto", batch_size: int = 16,
                 rerank: int = 100):
        self.store, self.k, self.batch_size = str(store), int(k), int(batch_size)
        self.rerank = int(rerank)  # a sharded ivfpq index: its top R re-ranked exactly
        self.root = st.open_store(self.store, mode="r")
        self.dataset = st.resolve_dataset(self.root, dataset)
        self.gallery_side, self.sat_group = self._satellite_gallery()
        self.spec = self.root[f"{st.FEATURES}/{self.dataset}"].attrs.get("fingerprint", {}).get("spec")
        if not self.spec or "weights_sha256" not in self.spec:
            raise LocateError(f"{self.dataset} in {self.store} has no extraction fingerprint (written "
                              "outside `geoalign extract`?): locate cannot know how to encode new images")
        self.weights = self._checked_weights(weights)
        self.backbone = load_backbone({"name": AUTO}, str(self.weights), list(self.spec["layers"]),
                                      resolve_device(device), precision)
        norm = self.spec["normalisation"]
        self.opts = EncodeOptions(self.backbone.channels, image_size=self.spec["image_size"],
                                  mean=tuple(norm["mean"]), std=tuple(norm["std"]))
        request = SimpleNamespace(store=self.store, heads=heads, fusion=fusion, fusion_weight=fusion_weight,
                                  layers=list(layers or self.spec["layers"]))
        self.embedder = resolve_embedder(self.root, request, self.dataset)
        self.gallery = StoredEmbeddings(self.root, self.dataset, "test", self.gallery_side,
                                        self.embedder.layers, self.embedder.embed)
        self.index = self._built_index()
        if self.index is None and len(self.gallery) * self.gallery.dim * 4 <= IN_MEMORY_BYTES:
            self.gallery = self.gallery.materialise()
        latlon = st.read_coordinates(self.root, self.dataset, "test", "satellite")
        self.gallery_latlon = None if latlon is None else latlon[self.gallery_side.rows]
        self._truths = None
        # a map gallery: the tiles' geometry, for a position finer than a tile (map_locate.py)
        self.map_tiles = (st.read_tile_table(self.root, self.dataset, self.gallery_side.rows)
                          if st.is_map_view(self.root, self.dataset) else None)
        self.map_files = st.read_map_files(self.root, self.dataset) if self.map_tiles is not None else None

    # ----- construction
    def _satellite_gallery(self):
        path = st.view_path(self.dataset, "test", "satellite")
        if path not in self.root:
            raise LocateError(f"{self.store} has no satellite gallery ({path}): locate searches the "
                              "test satellite images; extract them first (folder datasets: "
                              "<data_root>/test/satellite/<location>/<image>)")
        meta = st.read_view(self.root, self.dataset, "test", "satellite")
        rows = np.flatnonzero(meta["in_gallery"] & (meta["errors"] == ""))
        if len(rows) == 0:
            raise LocateError(f"{path} has no usable gallery image")
        return Side("satellite", rows, meta["ids"][rows], meta["labels"][rows]), self.root[path]

    def _checked_weights(self, weights) -> Path:
        """The weights extract used: `weights=`, else the path it recorded (or its seeded random
        model); refused unless their sha256 is the fingerprint's."""
        recorded = self.sat_group.attrs.get("config", {})
        given = weights or recorded.get("weights")
        want = self.spec["weights_sha256"]
        try:
            path = weights_source(recorded.get("backbone") or {"name": AUTO}, given)
        except ConfigError:
            where = f"are not at {given} (moved or deleted?)" if given else "were not recorded"
            raise LocateError(f"the weights the features in {self.store} were extracted with {where}; pass "
                              f"weights=PATH to them (backbone {self.spec.get('backbone')!r}, sha256 "
                              f"fingerprint {want[:16]}...)") from None
        have = weights_fingerprint(path)
        if have != want:
            raise LocateError(f"weights={path} are not the weights the store's features were extracted "
                              f"with (sha256 fingerprint {have[:16]}... vs {want[:16]}...); pass "
                              "weights=PATH to those, or extract again with these")
        return path

    def _built_index(self):
        """The store's index over exactly these gallery embeddings, if `index` built one."""
        want = gallery_fingerprint(self.embedder, DirectionSet("D2S", "all", self.gallery_side, self.gallery_side))
        try:
            folder = st.artefact_dir(self.store, "indices")
        except st.StoreError:
            return None
        for meta_path in sorted(folder.glob("*/index.json"), key=lambda p: "-flat" not in p.parent.name):
            rebuild = (f"rebuild it: `geoalign index store={self.store} mode=D2S "
                       f"index={meta_path.parent.name.rsplit('-', 1)[-1]} overwrite=true` (or delete {meta_path.parent})")
            meta = st.read_json(meta_path, rebuild)
            if meta.get("spec", {}).get("embeddings") == want and (meta_path.parent / "index.faiss").exists():
                self.index_name = meta_path.parent.name
                return load_built(meta_path.parent, meta, self.rerank, rebuild)
        return None

    # ----- localisation
    def encode(self, paths: list) -> np.ndarray:
        """Retrieval vectors of drone images, in batches, as the store's drone rows were made."""
        files = ImageFiles([str(p) for p in paths], self.opts.image_size)
        desc = {k: np.zeros((len(paths), self.backbone.channels), np.float32) for k in self.embedder.layers}
        order = [list(range(a, min(a + self.batch_size, len(paths)))) for a in range(0, len(paths), self.batch_size)]
        device = self.backbone.device.type
        batches = decoded_batches(files, order, auto_workers(device), pin=device == "cuda")
        for batch in batches:
            if batch["errors"]:
                batches.close()
                i, why = next(iter(batch["errors"].items()))
                raise LocateError(f"{paths[i]} is not an image that can be read ({why})")
            for indices, pixels in batch["stacks"]:
                out = encode_stack(self.backbone, pixels, self.opts)
                for k in self.embedder.layers:
                    desc[k][indices] = out[f"layer_{k}/desc"]
        return self.embedder.embed(desc, "drone")

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(gallery positions, scores) of the top k per query; junk satellites never returned."""
        k = min(self.k if self.map_tiles is None else max(self.k, REFINE_K), len(self.gallery_side.rows))
        if self.index is not None:
            scores, found = fx.search(self.index, queries, k)
            return found, scores
        return topk_gallery(queries, self.gallery, k, gallery_labels=self.gallery_side.labels)

    def locate(self, paths) -> list[dict]:
        """One answer per image: the top k satellites (id, location, score, coordinates), the
        top-1's position, and the error in metres when the image is a stored test drone image."""
        paths = [Path(p) for p in paths]
        check_images(paths)
        found, scores = self.search(self.encode(paths))
        return [self._answer(p, f, s) for p, f, s in zip(paths, found, scores)]

    __call__ = locate

    def _answer(self, path: Path, found: np.ndarray, scores: np.ndarray) -> dict:
        top = []
        for rank, (g, s) in enumerate(zip(found[:self.k], scores[:self.k]), start=1):
            if g < 0:
                continue
            sat_id = str(self.gallery_side.ids[g])
            item = {"rank": rank, "satellite_id": sat_id, "score": float(s),
                    "location": location_of(sat_id) if self.map_tiles is None else sat_id}
            if self.gallery_latlon is not None and np.isfinite(self.gallery_latlon[g]).all():
                item["lat"], item["lon"] = (float(v) for v in self.gallery_latlon[g])
            if self.map_tiles is not None:
                item["ground_m"] = float(self.map_tiles["ground_m"][g])
                item["footprint"] = self.map_tiles["footprint"][g].tolist()
            top.append(item)
        answer = {"image": str(path), "heads": self.embedder.name, "top": top,
                  "position": ({"lat": top[0]["lat"], "lon": top[0]["lon"]} if top and "lat" in top[0] else None)}
        if self.map_tiles is not None and top:
            answer["tile_position"] = answer["position"]
            answer["position"] = refine_position(self.map_tiles, self.map_files, found, scores)
        truth = self._truth(path)
        return answer if truth is None else add_truth(answer, truth)

    def _truth(self, path: Path) -> dict | None:
        """A stored test drone image's known location (and coordinates), found by its path."""
        if self._truths is None:
            self._truths = self._drone_rows()
        row = next((self._truths["rows"][i] for i in _ids_under(path, self._truths["bases"])
                    if i in self._truths["rows"]), None)
        if row is None:
            return None
        out = {"location": location_of(self._truths["ids"][row])}
        latlon = self._truths["latlon"]
        if latlon is not None and np.isfinite(latlon[row]).all():
            out["lat"], out["lon"] = float(latlon[row][0]), float(latlon[row][1])
        return out

    def _drone_rows(self) -> dict:
        """The stored test drone ids by row, and the folders they are relative to. Looked up by
        the photo's path relative to the data root, not by resolving every stored path
        (University-1652: 51,355 file-system lookups, ~2 s, before the first answer)."""
        path = st.view_path(self.dataset, "test", "drone")
        if path not in self.root or not self.root[path].attrs.get("data_root"):
            return {"bases": [], "rows": {}, "ids": [], "latlon": None}
        base = Path(self.root[path].attrs["data_root"])
        ids = [str(i) for i in self.root[f"{path}/ids"][:]]
        return {"bases": list(dict.fromkeys([Path(os.path.abspath(base)), base.resolve()])),
                "rows": dict(zip(ids, range(len(ids)))), "ids": ids,
                "latlon": st.read_coordinates(self.root, self.dataset, "test", "drone")}

    def map_view(self, answer: dict) -> dict | None:
        """The map around a map answer, and where its top tiles, position and truth fall on it."""
        if self.map_tiles is None or not answer.get("position") or self.map_files[0].web_tiles:
            return None  # web tiles: the answer sheet shows the tile images themselves
        points = [[answer["position"]["lat"], answer["position"]["lon"]]]
        points += [corner for item in answer["top"] for corner in item["footprint"]]
        truth = answer.get("truth") or {}
        points += [[truth["lat"], truth["lon"]]] if "lat" in truth else []
        half = max(2 * max(item["ground_m"] for item in answer["top"]), 1.5 * answer["position"]["uncertainty_m"],
                   min(1.2 * truth.get("error_m", 0) + 50, 2000))  # the truth in view when not too far
        view = map_around(self.map_files[answer["position"]["file"]], np.array(points), half)
        xy = view.pop("xy")
        view.update(answer_xy=xy[0], tiles_xy=xy[1:1 + 4 * len(answer["top"])].reshape(-1, 4, 2),
                    truth_xy=xy[-1] if "lat" in truth else None)
        return view

    def data_root(self) -> Path | None:
        root = self.sat_group.attrs.get("data_root")
        return Path(root) if root else None


def _ids_under(path: Path, bases: list[Path]) -> list[str]:
    """The ids `path` would have under each base (as given, or with symlinks resolved): a photo
    named through a symlinked folder, or by its real location, is found either way."""
    found = []
    for p in dict.fromkeys([Path(os.path.abspath(path)), path.resolve()]):
        found += [p.relative_to(b).as_posix() for b in bases if p.is_relative_to(b)]
    return found


def add_truth(answer: dict, truth: dict) -> dict:
    """answer["truth"] = truth ({location[, lat, lon]}), with the top-1's error in metres
    (`error_m`) when both have coordinates."""
    answer["truth"] = truth
    if answer["position"] and "lat" in truth:
        a = np.array([truth["lat"], truth["lon"]])
        b = np.array([answer["position"]["lat"], answer["position"]["lon"]])
        truth["error_m"] = float(haversine_m(a, b))
        if answer.get("tile_position"):  # a map answer: the top-1 tile centre's error beside it
            t = answer["tile_position"]
            truth["tile_error_m"] = float(haversine_m(a, np.array([t["lat"], t["lon"]])))
    return answer


def check_images(paths: list[Path]) -> None:
    """Refuse, before any work, a path that is missing or whose header is not an image's."""
    for path in paths:
        if not path.is_file():
            raise LocateError(f"{path} does not exist or is not a file")
        try:
            with Image.open(path) as img:
                img.size  # noqa: B018 - reading the header is the check
        except DECODE_FAILURES as e:  # the reason PIL gives is the user's answer
            raise LocateError(f"{path} is not an image ({type(e).__name__}: {e})") from None
