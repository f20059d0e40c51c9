"""The store's non-array files: the `artefacts/` folder (head weights, FAISS indices, scores,
pictures) and the JSON documents written there, each to a temp file moved into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import zarr

from .errors import StoreError


ARTEFACTS = "artefacts"


def artefact_dir(store_url: str, *parts: str, create: bool = True) -> Path:
    """A folder inside a local store for files that are not Zarr arrays (FAISS indices, head
    weights, reports, pictures); they are written to temp files and moved into place.

    They live under `artefacts/`, an empty Zarr *array*: zarr lists a group's members, not what
    lies under an array's prefix, so a plain `zarr.open_group(store)` traversal never meets them
    (a file or folder anywhere in the group tree makes it warn "not recognized as a component
    of a Zarr hierarchy"). Folders of stores written before (`<store>/heads/<name>`, ...) are
    moved there on first use."""
    if "://" in str(store_url) and not str(store_url).startswith("file://"):
        raise StoreError(f"{'/'.join(parts)} needs a local store path, not {store_url}")
    base = Path(str(store_url).removeprefix("file://"))
    path = base.joinpath(ARTEFACTS, *parts)
    if create and (base / "zarr.json").exists() and not (base / ARTEFACTS / "zarr.json").exists():
        _artefacts_node(base)  # also when it was deleted: plain zarr would warn about the folder
    if create and not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        _adopt_legacy(base, base.joinpath(*parts), path)
    return path


def _artefacts_node(base: Path) -> None:
    root = zarr.open_group(str(base), mode="a")
    node = root.require_array(ARTEFACTS, shape=(0,), dtype="uint8")
    node.attrs["about"] = ("non-array files of this store (heads weights, FAISS indices, reports, "
                           "pictures) lie in folders under this prefix: artefacts/<kind>/<name>/")


def _adopt_legacy(base: Path, old: Path, new: Path) -> None:
    """Move the non-Zarr files of a pre-`artefacts/` folder into `new` (Zarr nodes stay), then
    drop the folders this left empty."""
    if not old.is_dir():
        return
    for entry in old.iterdir():
        zarr_node = entry.name == "zarr.json" or (entry / "zarr.json").exists()
        if not zarr_node and not (new / entry.name).exists():
            os.replace(entry, new / entry.name)
    folder = old
    while folder != base and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False))
    os.replace(tmp, path)


def write_npy(path: Path, array) -> None:
    """np.save to a temp file moved into place (a kill never leaves a torn .npy)."""
    import numpy as np
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npy")
    np.save(tmp, array, allow_pickle=False)
    os.replace(tmp, path)


def write_npy_chunks(path: Path, dtype, n: int, chunks) -> None:
    """A 1-d .npy of n values of `dtype` written from `chunks` (arrays, in order) through a file,
    never held whole nor memory-mapped (a mapped file's dirty pages count as the writer's memory):
    the bytes np.save writes of their concatenation, to a temp file moved into place."""
    import numpy as np
    dtype = np.dtype(dtype)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npy")
    written = 0
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                     "fortran_order": False, "shape": (n,)})
            for chunk in chunks:
                part = np.ascontiguousarray(chunk, dtype=dtype)
                f.write(part.tobytes())
                written += len(part)
        if written != n:
            raise ValueError(f"write_npy_chunks: {written} values given for a .npy of {n}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
