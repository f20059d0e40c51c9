"""The Zarr v3 feature store: the only code that knows its layout (SPEC §3).

    features/<dataset>/                     attrs: fingerprint {hash, spec}
        <split>/<view>/                     attrs: n, block_size, layers, complete, n_failed, config
            ids (N,) str | labels (N,) int64 | in_query, in_gallery (N,) bool | extra/<name>
            errors (N,) str                 "" = ok, else why the image could not be used
            latlon (N, 2) float64           WGS84 lat/lon of the row's location, NaN = unknown
                                            (only when the dataset has coordinates)
            block_done (n_blocks,) bool     one chunk per block, written after the block's data
            layer_<k>/desc (N, C) float32 | layer_<k>/cls (N, C) float32 | layer_<k>/tokens

    artefacts                               an empty array: non-array files live under it
        heads/<name>/ | indices/<name>/ | scores/<name>/<mode>/ | locate/

The unit written, resumed and owned by a dask task is one block of `block_size` rows: its
chunks are written whole (each chunk key is replaced atomically by the local store), then its
`block_done` chunk. A killed run leaves at most a partly written block that is not marked done,
which the rerun overwrites. Two writers of one block write identical bytes, so no lock is needed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from ..datasets import ViewListing
from .errors import StoreError
from .metadata import check_metadata
from .integrity import (CHUNK_FAILURES, LISTING_CHANGED, CheckedArray, array_digest, damaged_blocks,
                        listing_changes, metadata_errors, repair_hint, view_digest)

FEATURES = "features"
STORE_VERSION = 1


# Every chunk ends with a crc32c (zarr v3's codec, read by plain zarr): damage is detected when
# read, never decoded into garbage. Features stay uncompressed (see prepare_view).
FEATURE_CODECS = (Crc32cCodec(),)
META_CODECS = (ZstdCodec(level=0), Crc32cCodec())


def view_path(dataset: str, split: str, view: str) -> str:
    return f"{FEATURES}/{dataset}/{split}/{view}"


def open_store(url: str, mode: str = "a") -> zarr.Group:
    """The store's root group; its metadata documents are parsed first (metadata.py), so a
    damaged one is named instead of failing somewhere inside zarr."""
    check_metadata(url)
    try:
        return zarr.open_group(str(url), mode=mode)
    except FileNotFoundError as e:
        raise StoreError(f"no geoalign store at {url}; run `geoalign extract` first") from e


def prepare_dataset(root: zarr.Group, dataset: str, spec: dict, spec_hash: str,
                    overwrite: bool) -> zarr.Group:
    """The dataset's feature group, refusing to mix features of another fingerprint."""
    path = f"{FEATURES}/{dataset}"
    if path in root:
        group = root[path]
        old = group.attrs.get("fingerprint", {})
        if old.get("hash") == spec_hash:
            return group
        if not overwrite:
            raise StoreError(_mismatch_message(path, old.get("spec", {}), spec))
        del root[path]
    group = root.require_group(path)
    group.attrs.update({"fingerprint": {"hash": spec_hash, "spec": spec},
                        "store_version": STORE_VERSION})
    return group


def _mismatch_message(path: str, old: dict, new: dict) -> str:
    keys = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
    diffs = "; ".join(f"{k}: stored {old.get(k)!r} vs requested {new.get(k)!r}" for k in keys)
    return (f"{path} holds features of another fingerprint ({diffs or 'unknown'}). A store never "
            f"mixes features: add overwrite=true to replace them, or use another store=PATH")


@dataclass
class ViewLayout:
    """What a view's arrays look like: one entry per layer, C channels, optional tokens."""
    layers: list[int]
    channels: int
    block_size: int
    token_shape: tuple[int, int] | None = None  # (tokens per image, C) when tokens are stored


def prepare_view(root: zarr.Group, dataset: str, listing: ViewListing, layout: ViewLayout,
                 config: dict) -> zarr.Group:
    """Create the view's arrays, or check that an existing one matches this listing."""
    path = view_path(dataset, listing.split, listing.view)
    if path in root:
        group = root[path]
        _check_same_view(group, path, listing, layout)
        return group
    group = root.require_group(path)
    n, bs = len(listing), layout.block_size
    meta_chunk = (max(1, min(n, 1 << 16)),)
    group.create_array("ids", shape=(n,), dtype=str, chunks=meta_chunk,
                       compressors=META_CODECS)[:] = np.array(listing.ids, dtype=object)
    for name, values in (("labels", listing.labels), ("in_query", listing.in_query),
                         ("in_gallery", listing.in_gallery),
                         *((f"extra/{k}", v) for k, v in listing.extra.items())):
        group.create_array(name, shape=(n,), dtype=values.dtype, chunks=meta_chunk,
                           compressors=META_CODECS)[:] = values
    group.create_array("errors", shape=(n,), dtype=str, chunks=(bs,), compressors=META_CODECS)
    group.create_array("block_done", shape=(n_blocks(n, bs),), dtype=bool, chunks=(1,),
                       fill_value=False, compressors=META_CODECS)
    # Network features do not compress (zstd saves ~nothing on them) but costs 2.5x the read
    # time and 2.7x the write time of raw chunks: feature arrays are stored uncompressed.
    for k in layout.layers:
        for kind in ("desc", "cls"):
            group.create_array(f"layer_{k}/{kind}", shape=(n, layout.channels), dtype="float32",
                               chunks=(bs, layout.channels), fill_value=0.0, compressors=FEATURE_CODECS)
        if layout.token_shape:
            group.create_array(f"layer_{k}/tokens", shape=(n, *layout.token_shape), dtype="float16",
                               chunks=(1, *layout.token_shape), fill_value=0.0, compressors=FEATURE_CODECS)
    group.attrs.update({"n": n, "block_size": bs, "layers": list(layout.layers),
                        "channels": layout.channels, "complete": False, "config": config,
                        "meta_digests": listing_digests(group)})
    return group


def listing_digests(group: zarr.Group) -> dict[str, str]:
    """Digests of the arrays written once from the listing: a chunk of them deleted later would
    read as fill values (zeros, "") without any error; check_listing finds it."""
    names = ["ids", "labels", "in_query", "in_gallery",
             *(f"extra/{k}" for k in (group["extra"].array_keys() if "extra" in group else ()))]
    return {name: array_digest(group[name]) for name in names}


def _check_same_view(group, path, listing, layout) -> None:
    changed = listing_changes(group)
    if changed:
        raise StoreError(f"{path}/{changed[0]}: {LISTING_CHANGED}; {rewrite_view_hint(group)}")
    attrs = group.attrs
    if attrs.get("block_size") != layout.block_size or attrs.get("layers") != list(layout.layers):
        raise StoreError(f"{path} was written with block_size={attrs.get('block_size')} and "
                         f"layers={attrs.get('layers')}; add overwrite=true to rewrite it")
    stored = [str(s) for s in read_meta(group, "ids")]
    if stored != listing.ids:
        changed = len(set(stored) ^ set(listing.ids))
        raise StoreError(f"the images under {path} changed since it was written ({len(stored)} "
                         f"stored, {len(listing)} now, {changed} differ); add overwrite=true")


def n_blocks(n: int, block_size: int) -> int:
    return -(-n // block_size)


def pending_blocks(group: zarr.Group) -> list[int]:
    return [int(b) for b in np.flatnonzero(~read_meta(group, "block_done"))]


def read_meta(group: zarr.Group, name: str) -> np.ndarray:
    """A view's per-image array (ids, labels, flags, errors, block_done) whole; damage is named
    (these are written once with the view, so the repair is to rewrite the view)."""
    if name not in group:
        raise StoreError(f"{group.path}/{name} is missing; {rewrite_view_hint(group)}")
    try:
        return group[name][:]
    except CHUNK_FAILURES as e:
        raise StoreError(f"{group.path}/{name} is damaged and cannot be read ({type(e).__name__}: "
                         f"{str(e)[:100]}); {rewrite_view_hint(group)} (`geoalign check` lists every "
                         "damaged array)") from None


def rewrite_view_hint(group: zarr.Group) -> str:
    folder = Path(store_location(group)) / group.path
    return (f"re-extract the view: delete {folder} and rerun `geoalign extract` with the arguments "
            "that wrote it (it extracts that view again)")


def reopen_damaged_blocks(group: zarr.Group, full: bool = True) -> dict[int, str]:
    """Done blocks whose chunks are missing or fail their checksum are marked not done, so the
    writer's next pass rewrites exactly them; returns {block: why}."""
    damaged = damaged_blocks(group, full)
    for block in damaged:
        group["block_done"][block] = False
    if damaged:
        group.attrs["complete"] = False
    return damaged


def block_rows(group: zarr.Group, block: int) -> slice:
    bs = group.attrs["block_size"]
    return slice(block * bs, min((block + 1) * bs, group.attrs["n"]))


def write_block(group: zarr.Group, block: int, arrays: dict[str, np.ndarray],
                errors: list[str]) -> None:
    """Write one whole block (`arrays` keyed like "layer_28/desc"), then mark it done."""
    rows = block_rows(group, block)
    for name, values in arrays.items():
        if values.shape[0] != rows.stop - rows.start:
            raise StoreError(f"block {block} of {name}: {values.shape[0]} rows for {rows}")
        if not np.isfinite(values).all():
            raise StoreError(f"non-finite values in {name} of block {block}; nothing written")
    for name, values in arrays.items():
        group[name][rows] = values
    group["errors"][rows] = np.array(errors, dtype=object)
    group["block_done"][block] = True


def finalize_view(group: zarr.Group) -> dict:
    """Mark a view complete when every block is done; returns its summary."""
    done = read_meta(group, "block_done")
    errors = [str(e) for e in read_meta(group, "errors")]
    failed = [(str(i), e) for i, e in zip(read_meta(group, "ids"), errors) if e]
    complete = bool(done.all())
    group.attrs.update({"complete": complete, "n_failed": len(failed)})
    return {"n": group.attrs["n"], "complete": complete, "failed": failed}


TEXT = np.dtypes.StringDType()


def read_view(root: zarr.Group, dataset: str, split: str, view: str) -> dict:
    """Metadata of one view: ids, labels, flags (absent = all true), errors, extra."""
    path = view_path(dataset, split, view)
    if path not in root:
        have = ", ".join(list_views(root)) or "nothing"
        raise StoreError(f"the store has no {path} (it has: {have})")
    group = root[path]
    n = read_meta(group, "labels").shape[0]
    # names as numpy strings, not Python objects: 1e7 tile names took 600 MB more as objects
    out = {"ids": read_meta(group, "ids").astype(TEXT, copy=False),
           "labels": read_meta(group, "labels").astype(np.int64)}
    for flag in ("in_query", "in_gallery"):
        out[flag] = read_meta(group, flag).astype(bool) if flag in group else np.ones(n, dtype=bool)
    # a complete view records its failures (n_failed); without any, its errors are all empty
    no_errors = "errors" not in group or (group.attrs.get("complete") and group.attrs.get("n_failed") == 0)
    out["errors"] = np.full(n, "", dtype=TEXT) if no_errors else read_meta(group, "errors").astype(TEXT, copy=False)
    out["extra"] = ({k: read_meta(group, f"extra/{k}") for k in group["extra"].array_keys()}
                    if "extra" in group else {})
    changed = listing_changes(group)  # after the reads: a checksum mismatch says more
    if changed:
        raise StoreError(f"{path}/{changed[0]}: {LISTING_CHANGED}; {rewrite_view_hint(group)}")
    return out


def read_layer(root: zarr.Group, dataset: str, split: str, view: str, layer: int,
               kind: str = "desc", rows=slice(None)) -> np.ndarray:
    return np.asarray(layer_array(root, dataset, split, view, layer, kind)[rows], dtype=np.float32)


def layer_array(root: zarr.Group, dataset: str, split: str, view: str, layer: int,
                kind: str = "desc"):
    """A feature array, read through the one place that names damage (integrity.py)."""
    path = f"{view_path(dataset, split, view)}/layer_{layer}/{kind}"
    if path not in root:
        raise StoreError(f"the store has no {path}; extract with layers including {layer}")
    group = root[view_path(dataset, split, view)]
    return CheckedArray(root[path], repair_hint(group, store_location(root)), done_blocks(group))


def done_blocks(group: zarr.Group) -> np.ndarray | None:
    """Which blocks of a view are written (None for a plain-zarr view). A complete view has them
    all: its one-chunk-per-block flags (~0.1 s to read for 200 blocks) are read only otherwise."""
    if "block_done" not in group:
        return None
    if group.attrs.get("complete"):
        return np.ones(group["block_done"].shape[0], bool)
    return read_meta(group, "block_done")


def features_fingerprint(root: zarr.Group, dataset: str) -> str | None:
    """The hash of how a dataset's features were made (None for plain-zarr stores of a user's own)."""
    return root[f"{FEATURES}/{dataset}"].attrs.get("fingerprint", {}).get("hash")


def content_digest(root: zarr.Group, dataset: str, split: str, layers: list[int]) -> str:
    """sha256 standing for everything a stage reads of a split (both views: ids, labels, flags,
    errors and the layers' descriptors): an artefact records it and is refused when it changes.
    Blind to nothing a stage reads (row order, groups, a single chunk), and costs milliseconds."""
    names = ["ids", "labels", "in_query", "in_gallery", "errors", *(f"layer_{k}/desc" for k in layers)]
    parts = {}
    for view in ("drone", "satellite"):
        path = view_path(dataset, split, view)
        parts[view] = view_digest(root[path], names) if path in root else None
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def store_location(root: zarr.Group) -> str:
    """The store's URL or folder, from any of its groups."""
    store = root.store
    return str(getattr(store, "root", store))


def read_view_layers(root: zarr.Group, dataset: str, split: str, view: str) -> list[int]:
    group = root[view_path(dataset, split, view)]
    return sorted(int(k.split("_", 1)[1]) for k in group.group_keys() if k.startswith("layer_"))


def stored_layers(root, dataset: str, layers, split: str = "test") -> list[int]:
    """Requested layers as stored in the views of `split`, the split the stage reads
    (negative indices counted from the backbone's depth)."""
    spec = root[f"{FEATURES}/{dataset}"].attrs.get("fingerprint", {}).get("spec", {})
    depth = (spec.get("arch") or {}).get("num_hidden_layers")
    resolved = [k + depth if (k < 0 and depth) else k for k in layers]
    views = [v for v in ("drone", "satellite") if view_path(dataset, split, v) in root]
    if not views:
        have = ", ".join(p.removeprefix(f"{FEATURES}/") for p in list_views(root)) or "nothing"
        raise StoreError(f"the store's {dataset} features have no {split} split (it has: {have}); "
                         f"extract it first (`geoalign extract ... split=[{split}]`)")
    have = sorted(set.intersection(*(set(read_view_layers(root, dataset, split, v)) for v in views)))
    missing = [k for k in resolved if k not in have]
    if missing:
        raise StoreError(f"layers {missing} are not in the store's {dataset} {split} features "
                         f"(stored: {have}); pass layers= among them")
    return resolved


def resolve_dataset(root: zarr.Group, dataset: str | None) -> str:
    """The dataset to read: as named, or the store's only one."""
    have = list_datasets(root)
    if dataset is None and len(have) == 1:
        return have[0]
    if dataset in have:
        return dataset
    raise StoreError(f"dataset={dataset} is not in the store (it holds: {', '.join(have) or 'none'})"
                     + ("; name one with dataset=NAME" if dataset is None and have else ""))


def write_topk(root: zarr.Group, path: str, query_ids, gallery_ids, topk_positions, topk_scores) -> None:
    """Top-k gallery ids per query (topk_positions: rows of gallery_ids, -1 = none, written as
    "") as plain Zarr arrays under `path` (replaced whole)."""
    if path in root:
        del root[path]
    group = root.require_group(path)
    n, k = topk_positions.shape
    # numpy's variable-width strings: zarr encodes them ~1.6x faster than fixed-width or objects;
    # the gallery's few ids are converted once and indexed (converting the n x k table cost 4x)
    names = np.append(np.asarray(gallery_ids), "").astype(np.dtypes.StringDType())
    topk_ids = names[np.where(topk_positions >= 0, topk_positions, len(names) - 1)]
    query_ids = np.asarray(query_ids).astype(np.dtypes.StringDType())
    for name, values, chunks in (("query_ids", query_ids, (max(1, min(n, 65536)),)),
                                 ("topk_ids", topk_ids, (max(1, min(n, 8192)), k)),
                                 ("topk_scores", topk_scores, (max(1, min(n, 8192)), k))):
        group.create_array(name, shape=values.shape, dtype=str if values.dtype.kind in "OUST" else values.dtype,
                           chunks=chunks, compressors=META_CODECS)[:] = values


def list_views(root: zarr.Group) -> list[str]:
    if FEATURES not in root:
        return []
    return [f"{FEATURES}/{d}/{s}/{v}" for d in sorted(root[FEATURES].group_keys())
            for s in sorted(root[f"{FEATURES}/{d}"].group_keys())
            for v in sorted(root[f"{FEATURES}/{d}/{s}"].group_keys())]


def list_datasets(root: zarr.Group) -> list[str]:
    return sorted(root[FEATURES].group_keys()) if FEATURES in root else []


def write_coordinates(group: zarr.Group, latlon: np.ndarray, source: str) -> None:
    """A view's `latlon` (N, 2) float64 WGS84 degrees per row (NaN = unknown), replaced whole:
    coordinates are metadata, not features, so a changed coordinates file just rewrites them."""
    if "latlon" in group:
        del group["latlon"]
    n = latlon.shape[0]
    array = group.create_array("latlon", shape=(n, 2), dtype="float64", fill_value=np.nan,
                               chunks=(max(1, min(n, 1 << 16)), 2), compressors=META_CODECS)
    array[:] = latlon
    array.attrs.update({"columns": ["lat", "lon"], "units": "degrees (WGS84)", "source": source})


def read_coordinates(root: zarr.Group, dataset: str, split: str, view: str) -> np.ndarray | None:
    """(N, 2) lat/lon of a view's rows, or None when the store has no coordinates for it."""
    path = f"{view_path(dataset, split, view)}/latlon"
    return np.asarray(root[path][:], np.float64) if path in root else None


def split_damage(root: zarr.Group, dataset: str, split: str) -> StoreError | None:
    """When an artefact's recorded content digest no longer matches, damage is one cause besides
    a rewrite: a StoreError naming the split's damaged arrays and blocks (None when intact), so a
    damaged chunk is never reported as "changed: refit"."""
    found = []
    for view in ("drone", "satellite"):
        path = view_path(dataset, split, view)
        if path not in root:
            continue
        group = root[path]
        found += [(f"{path}/{name}: {why}", rewrite_view_hint(group)) for name, why in metadata_errors(group).items()]
        found += [(f"{path} block {block}: {why}", repair_hint(group, store_location(root)))
                  for block, why in damaged_blocks(group, full=True).items()]
    if not found:
        return None
    return StoreError(f"the store's {dataset} {split} split is damaged: "
                      f"{'; '.join(f for f, _ in found[:4])}; {found[0][1]}")
