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


def read_record(path: Path) -> dict:
    """A build's JSON record (build.json, index.json, a shard's mark); {} when it is missing,
    unreadable or not an object: a record not written whole counts as not written."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def record_damage(path: Path) -> str | None:
    """Why a build's record that reads as JSON is damaged: it holds no object (a list, a number:
    read_record takes it for absent, so the build would lose what it records); None when it
    is an object, or missing, or does not parse (the store's reader of every JSON file,
    `damaged_artefacts`, names that one)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return None if isinstance(value, dict) else f"holds a JSON {type(value).__name__}, not an object (a record)"


def file_damage(path: Path, sha256: str | None, size: int | None = None) -> str | None:
    """Why the file at `path` is not the one recorded (its sha256, and its size when recorded);
    None when it is."""
    if not path.is_file():
        return "the file is missing"
    if size is not None and path.stat().st_size != size:
        return f"{path.stat().st_size} bytes, {size} when written"
    if file_sha256(path) != sha256:
        return "its sha256 is not the one recorded when it was written"
    return None


def rows_label(start: int, stop: int) -> str:
    """How a shard's rows of vectors.npy are named in a damage report."""
    return f"vectors.npy rows {int(start)}-{int(stop) - 1}"


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


def _recorded(folder: Path) -> dict[str, tuple[str | None, int | None]]:
    """{file relative to `folder`: (sha256, size) recorded when it was written} of a build."""
    recorded = {"trained.faiss": (read_record(folder / "build.json").get("trained_sha256"), None)}
    for mark_path in sorted((folder / "shards").glob("shard-*.json")):
        mark = read_record(mark_path)
        recorded[str(mark_path.with_suffix(".faiss").relative_to(folder))] = (mark.get("sha256"), mark.get("bytes"))
    for name, files in read_record(folder / "index.json").get("files", {}).items():
        recorded[name] = (files.get("sha256"), files.get("bytes"))
    return {name: sha_size for name, sha_size in recorded.items() if sha_size[0]}   # nothing recorded: nothing to check


def damage(folder: Path) -> dict[str, str]:
    """{file (relative to `folder`, a shard's rows as 'vectors.npy rows A-B'): why} for every
    piece of the build in `folder` that differs from its record; {} when all match."""
    out: dict[str, str] = {}
    folder = Path(folder)
    for record in [folder / "build.json", folder / "index.json", *sorted((folder / "shards").glob("shard-*.json"))]:
        why = record_damage(record)
        if why:
            out[str(record.relative_to(folder))] = why
    vectors = _vectors(folder)
    for mark_path in sorted((folder / "shards").glob("shard-*.json")):
        mark = read_record(mark_path)
        if mark.get("vectors_sha256"):
            a, b = int(mark["start"]), int(mark["stop"])
            if vectors is None or vectors[1] < b:
                out[rows_label(a, b)] = "are missing (vectors.npy is missing, truncated or not an array)"
            elif rows_digest(vectors[0], a, b) != mark["vectors_sha256"]:
                name = mark_path.with_suffix(".faiss").name
                out[rows_label(a, b)] = f"differ from what {name} wrote there (their sha256)"
    for name, (sha256, size) in _recorded(folder).items():
        why = file_damage(folder / name, sha256, size)
        if why:
            out[name] = why
    return out


def sharded_recorded(artefacts: Path) -> set[str]:
    """The files (relative to an artefacts folder) that `sharded_damage` reads whole against
    their recorded sha256: `geoalign check` reads them there only, not once more as FAISS files."""
    return {str(build.parent.relative_to(artefacts) / name)
            for build in sorted(Path(artefacts).glob("indices/*/build.json")) for name in _recorded(build.parent)}


def sharded_damage(artefacts: Path) -> dict[str, str]:
    """`damage` of every sharded build under an artefacts folder: {path relative to it: why and
    the command that repairs it} (what `geoalign check` reports)."""
    out = {}
    for build_path in sorted(Path(artefacts).glob("indices/*/build.json")):
        folder = build_path.parent
        rerun = read_record(build_path).get("rerun") or "geoalign index ... index=ivfpq"
        for name, why in damage(folder).items():
            where = folder.relative_to(artefacts) / name
            out[str(where)] = f"{why}; " + (f"rebuild it: delete {where.parent} and run its `{rerun}` again (what the "
                                            "build was is lost with its record)" if name == "build.json"
                                            else f"repair it with: {rerun} verify=true")
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
        redo = [m for m in marks if _reported_as(folder, m) & damaged.keys()]
    for mark in redo:
        mark.with_suffix(".faiss").unlink(missing_ok=True)
        mark.unlink()
    if vectors_lost:
        (folder / "vectors.npy").unlink(missing_ok=True)   # made again, then filled by every shard
    for name in ("index.json", "index.faiss", "index.ivfdata"):
        (folder / name).unlink(missing_ok=True)   # merged again from the shards


def _reported_as(folder: Path, mark_path: Path) -> set[str]:
    """The names `damage` gives a shard's damage: its file's and its rows'."""
    mark = read_record(mark_path)
    return {str(mark_path.with_suffix(".faiss").relative_to(folder)),
            rows_label(mark.get("start", 0), mark.get("stop", 0))}
