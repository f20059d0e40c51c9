"""Guarded readers of the store's non-array files, one per kind: JSON documents, JSON-lines logs,
numpy arrays and FAISS indices (safetensors and torch files: tensor_files.py; the Zarr metadata:
metadata.py). Whatever way such a file is damaged (missing, empty, truncated, filled with
garbage, another format), the read fails with a DamagedArtefact naming the file and the command
that rebuilds it, never with the parser's traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import StoreError


class DamagedArtefact(StoreError):
    """A file of the store that cannot be read as what it should be; `path` is the file."""

    def __init__(self, path, why: str, rebuild: str):
        super().__init__(f"{path} {why}: it is damaged or was not written whole; {rebuild}")
        self.path = Path(path)


def _text(path: Path, rebuild: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DamagedArtefact(path, "is missing", rebuild) from None
    except UnicodeDecodeError:
        raise DamagedArtefact(path, "is not text (binary bytes)", rebuild) from None
    except OSError as e:
        raise DamagedArtefact(path, f"cannot be read ({e.strerror})", rebuild) from None


def read_json(path, rebuild: str, kind: type = dict):
    """The JSON document at `path`, which must hold a `kind` (an object, by default)."""
    text = _text(path, rebuild)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DamagedArtefact(path, f"is not valid JSON ({e.msg} at line {e.lineno})", rebuild) from None
    if not isinstance(value, kind):
        wanted = " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
        raise DamagedArtefact(path, f"holds a JSON {type(value).__name__}, not a {wanted}", rebuild)
    return value


def read_json_lines(path, rebuild: str) -> list[dict]:
    """The records of a JSON-lines log. A last line that does not parse is dropped: it is the
    record a killed writer was halfway through; an unparsable line before it is damage."""
    lines = _text(path, rebuild).splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            if number == len(lines):
                break
            raise DamagedArtefact(path, f"line {number} is not a JSON record", rebuild)
        records.append(record)
    return records


def read_npy(path, rebuild: str, ndim: int | None = None, mmap: bool = False) -> np.ndarray:
    """A .npy array (never unpickled), of `ndim` dimensions when given; `mmap`: memory-mapped
    (its header and size checked, nothing read: an index's vectors.npy is 30 GB at 1e7)."""
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except FileNotFoundError:
        raise DamagedArtefact(path, "is missing", rebuild) from None
    except (ValueError, EOFError, OSError) as e:  # truncated header/data, pickled or foreign bytes
        raise DamagedArtefact(path, f"is not a readable .npy array ({str(e)[:80]})", rebuild) from None
    if ndim is not None and array.ndim != ndim:
        raise DamagedArtefact(path, f"holds a {array.ndim}-d array, not {ndim}-d", rebuild)
    return array


def read_faiss_index(path, rebuild: str):
    """A FAISS index written by faiss.write_index (faiss' C++ reader raises RuntimeError)."""
    import faiss  # only where an index is read
    path = Path(path)
    if not path.is_file():
        raise DamagedArtefact(path, "is missing", rebuild)
    try:
        return faiss.read_index(str(path))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "read error"
        raise DamagedArtefact(path, f"is not a readable FAISS index ({first[:100]})", rebuild) from None


READERS = {  # suffix -> how check reads a file of that kind
    ".json": lambda p, fix: read_json(p, fix, (dict, list)),
    ".jsonl": read_json_lines,
    ".npy": lambda p, fix: read_npy(p, fix, mmap=True),
    ".faiss": read_faiss_index,
}


def damaged_artefacts(folder: Path, read_elsewhere: set[str] = frozenset()) -> dict[str, str]:
    """Every file under the artefacts folder that its kind's reader refuses: relative path ->
    why (pictures and reports are for people; nothing reads them back). `read_elsewhere`:
    relative paths the caller checks otherwise (a sharded index's files, against their sha256),
    not read here too."""
    from .tensor_files import CheckpointError, check_safetensors
    bad = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        if str(path.relative_to(folder)) in read_elsewhere:
            continue
        fix = _rebuild_hint(path.relative_to(folder))
        try:
            if path.suffix == ".safetensors":
                check_safetensors(path, "the tensors it was written with")
            elif path.suffix in READERS and not path.name.startswith("."):
                READERS[path.suffix](path, fix)
        except DamagedArtefact as e:
            bad[str(path.relative_to(folder))] = str(e)
        except CheckpointError as e:
            bad[str(path.relative_to(folder))] = f"{e}; {fix}"
    return bad


def _rebuild_hint(relative: Path) -> str:
    kind = relative.parts[0] if relative.parts else ""
    name = relative.parts[1] if len(relative.parts) > 1 else "NAME"
    if kind == "heads":
        return f"refit them: `geoalign fit-heads name={name} overwrite=true` (or import-heads again)"
    if kind == "indices":
        return f"rebuild it: `geoalign index ... overwrite=true` (or delete the folder {relative.parent})"
    if kind == "scores":
        return "rerun `geoalign score` with the same arguments (it writes this again)"
    return "rerun the stage that wrote it"
