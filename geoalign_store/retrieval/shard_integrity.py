"""A sharded index's files against what was recorded when each was written (issue 23).

A build in `indices/<name>/` records a digest of every file it writes whole: `build.json` holds
trained.faiss's sha256, each shard's mark (`shards/shard-A-B.json`) its file's sha256 and the
sha256 of its rows of `vectors.npy` (the float32 bytes it copied there), `index.json` the merged
files'. `damage` reads them all back (streaming: memory stays at one chunk of rows whatever the
size; at 1e7 x 768 that is 33 GB read) and names what differs; `clear_damaged` removes it so
that the build resumes and redoes exactly that: a damaged shard (its file or its vector rows) is
added again, a damaged trained index is trained again with every shard made from it, and the
shards are merged again. `geoalign check` reports `damage`; `geoalign index ... verify=true`
repairs it. Nothing here is read on a plain load: a search trusts sizes, a verify reads bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..config import file_sha256
from .sharded import READ_ROWS


def rows_digest(layout: tuple[Path, int, int], start: int, stop: int) -> str:
    """sha256 of rows [start, stop) of a .npy file (`layout`: its path, data offset, bytes a
    row), read from the file a chunk at a time: the bytes a shard hashed as it wrote them.
    Plain reads, not a memory map, whose touched pages count as the reader's resident memory
    (3 GB at 1e6 when the rows were read through np.load(mmap_mode="r"))."""
    path, offset, row_bytes = layout
    digest, left = hashlib.sha256(), (stop - start) * row_bytes
    with open(path, "rb") as f:
        f.seek(offset + start * row_bytes)
        while left > 0:
            block = f.read(min(left, READ_ROWS * row_bytes))
            if not block:
                break   # a short file: its digest differs
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _file_differs(path: Path, recorded: dict | None) -> str | None:
    if not recorded or not recorded.get("sha256"):
        return None   # nothing recorded: written by a build that kept no digest
    if not path.is_file():
        return "is missing"
    if "bytes" in recorded and path.stat().st_size != recorded["bytes"]:
        return f"holds {path.stat().st_size} bytes, {recorded['bytes']} when written"
    if file_sha256(path) != recorded["sha256"]:
        return "differs from what was written (its sha256)"
    return None


def _vectors(folder: Path) -> tuple[tuple[Path, int, int], int] | None:
    """((path, data offset, bytes a row), rows) of vectors.npy, from its header; None when it is
    missing, truncated or not a float32 array: every shard's rows are then damaged."""
    try:
        vectors = np.load(folder / "vectors.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    if vectors.dtype != np.float32 or vectors.ndim != 2 or not vectors.flags.c_contiguous:
        return None
    layout = (folder / "vectors.npy", int(vectors.offset), int(vectors.shape[1]) * 4)
    return layout, int(vectors.shape[0])


def damage(folder: Path) -> dict[str, str]:
    """{file (relative to `folder`, a shard's rows as 'vectors.npy rows A-B'): why} for every
    piece of the build in `folder` that differs from its record; {} when all match."""
    folder = Path(folder)
    build = _json(folder / "build.json")
    out = {}
    why = _file_differs(folder / "trained.faiss", {"sha256": build.get("trained_sha256")})
    if why:
        out["trained.faiss"] = why
    vectors = _vectors(folder)
    for mark_path in sorted((folder / "shards").glob("shard-*.json")):
        mark = _json(mark_path)
        shard = mark_path.with_suffix(".faiss")
        why = _file_differs(shard, mark)
        if why:
            out[str(shard.relative_to(folder))] = why
        if mark.get("vectors_sha256"):
            a, b = int(mark["start"]), int(mark["stop"])
            rows = f"vectors.npy rows {a}-{b - 1}"
            if vectors is None or vectors[1] < b:
                out[rows] = "are missing (vectors.npy is missing, truncated or not an array)"
            elif rows_digest(vectors[0], a, b) != mark["vectors_sha256"]:
                out[rows] = f"differ from what {shard.name} wrote there (their sha256)"
    for name, recorded in _json(folder / "index.json").get("files", {}).items():
        why = _file_differs(folder / name, recorded)
        if why:
            out[name] = why
    return out


def sharded_damage(artefacts: Path) -> dict[str, str]:
    """`damage` of every sharded build under an artefacts folder: {path relative to it: why and
    the command that repairs it} (what `geoalign check` reports)."""
    out = {}
    for build_path in sorted(Path(artefacts).glob("indices/*/build.json")):
        folder = build_path.parent
        rerun = _json(build_path).get("rerun") or "geoalign index ... index=ivfpq"
        for name, why in damage(folder).items():
            where = folder.relative_to(artefacts) / name
            out[str(where)] = f"{why}; repair it with: {rerun} verify=true"
    return out


def clear_damaged(folder: Path, damaged: dict[str, str]) -> None:
    """Remove what `damaged` (from `damage`) names, so that the build resumes and redoes it."""
    if not damaged:
        return
    folder = Path(folder)
    marks = sorted((folder / "shards").glob("shard-*.json"))
    vectors_lost = _vectors(folder) is None
    if "trained.faiss" in damaged:   # every shard was made from it
        (folder / "trained.faiss").unlink(missing_ok=True)
    if "trained.faiss" in damaged or vectors_lost:
        redo = marks
    else:
        redo = [m for m in marks if str(m.with_suffix(".faiss").relative_to(folder)) in damaged
                or _rows_name(m) in damaged]
    for mark in redo:
        mark.with_suffix(".faiss").unlink(missing_ok=True)
        mark.unlink()
    if vectors_lost:
        (folder / "vectors.npy").unlink(missing_ok=True)   # made again, then filled by every shard
    for name in ("index.json", "index.faiss", "index.ivfdata"):
        (folder / name).unlink(missing_ok=True)   # merged again from the shards


def _rows_name(mark_path: Path) -> str:
    mark = _json(mark_path)
    return f"vectors.npy rows {mark.get('start')}-{int(mark.get('stop', 0)) - 1}"
