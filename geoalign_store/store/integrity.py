"""Chunk-level integrity of the store (part of the store wing: it knows the chunk layout).

Every array geoalign writes ends its chunks with a crc32c checksum (zarr v3's `crc32c` codec,
which plain zarr reads), so a truncated or altered chunk fails when read instead of decoding to
garbage. A *missing* chunk would read as the fill value (zeros) without any error, so a view's
done blocks are also checked for the presence of their chunks.

All feature reads go through `CheckedArray`: a storage or decoding failure becomes a StoreError
naming the array, the block and the command that repairs it. `damaged_blocks` finds the done
blocks a rerun of extract (or simulate) must write again; `check_view` is `geoalign check`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec
from zarr.core.sync import sync  # zarr's own loop: store listing is async-only in zarr 3

from .errors import StoreError

# What reading a damaged chunk raises: a checksum mismatch or an undecodable chunk (ValueError),
# a codec's own error (RuntimeError), an unreadable file (OSError).
CHUNK_FAILURES = (ValueError, RuntimeError, OSError)

FEATURE_KINDS = ("desc", "cls", "tokens")


def _prefix(array: zarr.Array) -> str:
    """The array's key prefix in its store ("" when the array is the store's root)."""
    return f"{array.store_path.path}/" if array.store_path.path else ""


def chunk_keys(array: zarr.Array) -> list[tuple[tuple[int, ...], str]]:
    """(grid coordinates, store key) of every chunk of the array, written or not."""
    grid = [-(-s // c) for s, c in zip(array.shape, array.chunks)]
    prefix = _prefix(array)
    return [(coords, prefix + array.metadata.encode_chunk_key(coords)) for coords in np.ndindex(*grid)]


def present_chunks(array: zarr.Array) -> set[tuple[int, ...]]:
    """Grid coordinates of the chunks that exist in storage (one listing, no data read)."""
    async def keys():
        return {k async for k in array.store_path.store.list_prefix(_prefix(array))}

    listed = sync(keys())
    return {coords for coords, key in chunk_keys(array) if key in listed}


def repair_hint(view: zarr.Group, store_url: str) -> str:
    """The command that rewrites a view's damaged blocks, from what the view says wrote it."""
    config = dict(view.attrs.get("config") or {})
    if "simulator" in config:
        sim = config["simulator"]
        return (f"geoalign simulate store={store_url} family={sim.get('family')} "
                f"seed={sim.get('seed')} (it rewrites only the damaged blocks)")
    if "dataset" in config:
        name = (config.get("dataset") or {}).get("name")
        extra = f" weights={config['weights']}" if config.get("weights") else ""
        return (f"geoalign extract store={store_url} dataset={name} "
                f"data_root={view.attrs.get('data_root')}{extra} (it re-extracts only the damaged blocks)")
    return "rewrite the damaged chunk with the tool that wrote this store"


class CheckedArray:
    """A 2-D feature array read through one place that names damage instead of raising zarr's
    or numpy's bare errors (a truncated chunk: "cannot reshape array of size 25 ...")."""

    def __init__(self, array: zarr.Array, hint: str, block_done: np.ndarray | None = None):
        self.array, self.hint = array, hint
        self.shape, self.dtype, self.chunks, self.ndim = array.shape, array.dtype, array.chunks, array.ndim
        self.path, self.shards = array.path, getattr(array, "shards", None)
        self._read_rows = _raw_reader(array)   # None: a layout zarr itself must decode
        if block_done is not None:
            missing = missing_blocks(array, block_done)
            if missing:
                raise StoreError(self._message(missing[0], "chunk file missing", len(missing)))

    def __getitem__(self, key):
        if self._read_rows is not None and isinstance(key, slice) and key.step in (None, 1):
            lo, hi, _ = key.indices(self.shape[0])
            return self._read_rows(lo, max(lo, hi), self._message)
        try:
            return self.array[key]
        except CHUNK_FAILURES as e:  # find and name the block
            raise self._damage(e) from None

    def read_into(self, lo: int, hi: int, out: np.ndarray) -> np.ndarray:
        """Rows lo:hi written into `out` (any writable view, e.g. columns of a wider buffer):
        extract's layout is copied there chunk by chunk, with no intermediate array."""
        if self._read_rows is not None:
            return self._read_rows(lo, hi, self._message, out)
        from zarr.core.buffer.cpu import NDBuffer
        try:  # decoded straight into `out`: no second copy of a (possibly huge) chunk
            self.array.get_basic_selection(slice(lo, hi), out=NDBuffer.from_numpy_array(out))
        except CHUNK_FAILURES as e:  # find and name the block
            raise self._damage(e) from None
        return out

    def _damage(self, error: Exception) -> StoreError:
        bad = first_bad_block(self.array)
        block, reason = bad if bad else (None, f"{type(error).__name__}: {error}")
        return StoreError(self._message(block, reason))

    def _message(self, block, reason: str, count: int = 1) -> str:
        rows = self.array.chunks[0]
        where = (f"block {block} (rows {block * rows}-{min((block + 1) * rows, self.shape[0]) - 1})"
                 if block is not None else "a block")
        more = f" and {count - 1} more block(s)" if count > 1 else ""
        return (f"{self.path}: {where}{more} is damaged ({reason}). Repair: {self.hint}; "
                f"`geoalign check` lists every damaged block")


# ----- the fast read of geoalign's own feature layout: raw little-endian rows + crc32c -----

_POOL = ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="chunk-read")


def _raw_reader(array: zarr.Array):
    """Rows of a local, row-chunked, uncompressed + crc32c array, read chunk by chunk in threads
    (file reads, the checksum and the copy release the GIL: zarr's own loop decodes one chunk
    at a time, so the checksum would otherwise add ~40% to a read; see benchmarks/extract.py).
    None for any other layout: those go through zarr."""
    meta = array.metadata
    codecs = [type(c).__name__ for c in getattr(meta, "codecs", ())]
    root = getattr(array.store_path.store, "root", None)
    if (codecs != ["BytesCodec", "Crc32cCodec"] or root is None or array.ndim != 2
            or array.chunks[1] != array.shape[1] or array.dtype != np.float32
            or str(getattr(meta.codecs[0], "endian", "little")).split(".")[-1] != "little"):
        return None
    base = Path(root) / array.store_path.path
    rows, width = array.chunks
    fill = np.float32(meta.fill_value or 0)

    chunk_bytes = rows * width * 4 + 4
    local = threading.local()  # one reused chunk buffer per reading thread: no page faults

    def read(lo: int, hi: int, message, out: np.ndarray | None = None) -> np.ndarray:
        out = np.empty((hi - lo, width), np.float32) if out is None else out
        first, last = lo // rows, -(-hi // rows)

        def one(block: int) -> None:
            a, b = max(lo, block * rows), min(hi, (block + 1) * rows)
            path = base / meta.encode_chunk_key((block, 0))
            if not hasattr(local, "buf"):
                local.buf = bytearray(chunk_bytes + 1)  # one spare byte: a longer file shows
            try:
                with open(path, "rb", buffering=0) as f:
                    size = f.readinto(local.buf)
            except FileNotFoundError:
                out[a - lo:b - lo] = fill      # never written: zarr's fill value (done blocks were checked)
                return
            if size != chunk_bytes:
                raise StoreError(message(block, f"truncated: {size} of {chunk_bytes} bytes"))
            raw = np.frombuffer(local.buf, np.uint8, count=chunk_bytes)
            if google_crc32c.value(raw[:-4]).to_bytes(4, "little") != bytes(raw[-4:]):
                raise StoreError(message(block, "checksum mismatch"))
            chunk = raw[:-4].view(np.float32).reshape(rows, width)
            out[a - lo:b - lo] = chunk[a - block * rows:b - block * rows]
        list(_POOL.map(one, range(first, last)))
        return out

    return read


def missing_blocks(array: zarr.Array, block_done: np.ndarray) -> list[int]:
    """Done blocks (chunk rows) whose chunk file is absent: they would silently read as zeros."""
    present = {c[0] for c in present_chunks(array)}
    return [int(b) for b in np.flatnonzero(block_done) if b not in present]


def block_error(array: zarr.Array, block: int) -> str | None:
    """Why one chunk-row of `array` cannot be read, or None when it reads and checks out."""
    rows = array.chunks[0]
    lo, hi = block * rows, min((block + 1) * rows, array.shape[0])
    reader = _raw_reader(array)
    try:
        reader(lo, hi, lambda _block, why: why) if reader else array[lo:hi]
    except StoreError as e:
        return str(e)
    except CHUNK_FAILURES as e:
        return _reason(e)
    return None


def _reason(error: Exception) -> str:
    text = str(error)
    if "checksum" in text.lower():
        return "checksum mismatch"
    return f"cannot decode: {type(error).__name__}: {text[:120]}"


def first_bad_block(array: zarr.Array) -> tuple[int, str] | None:
    for block in range(-(-array.shape[0] // array.chunks[0])):
        reason = block_error(array, block)
        if reason:
            return block, reason
    return None


def feature_arrays(view: zarr.Group) -> dict[str, zarr.Array]:
    """The view's per-block feature arrays, keyed like "layer_28/desc"."""
    out = {}
    for layer in sorted(k for k in view.group_keys() if k.startswith("layer_")):
        for kind in FEATURE_KINDS:
            if kind in view[layer]:
                out[f"{layer}/{kind}"] = view[f"{layer}/{kind}"]
    return out


def damaged_blocks(view: zarr.Group, full: bool = True) -> dict[int, str]:
    """Done blocks that cannot be read back: chunk missing, or (full) failing its checksum or
    decoding. Tokens are only checked for presence (they can be ~100x the descriptors)."""
    if "block_done" not in view:
        return {}
    try:
        done = view["block_done"][:]
    except CHUNK_FAILURES:
        return {}  # metadata_errors names it; without it no block can be trusted or repaired alone
    bad: dict[int, str] = {}
    for name, array in feature_arrays(view).items():
        for block in missing_blocks(array, done):
            bad.setdefault(block, f"{name}: chunk file missing")
        if full and not name.endswith("tokens"):
            for block in np.flatnonzero(done):
                if int(block) not in bad and (reason := block_error(array, int(block))):
                    bad[int(block)] = f"{name}: {reason}"
    return dict(sorted(bad.items()))


LISTING_CHANGED = "a chunk is missing or was rewritten since the view was written (its digest changed)"


def listing_changes(view: zarr.Group) -> list[str]:
    """The arrays written once from the listing whose digest is not the one recorded then
    (views written before digests were recorded: none)."""
    recorded = view.attrs.get("meta_digests") or {}
    return [name for name, digest in recorded.items()
            if name not in view or array_digest(view[name]) != digest]


def metadata_errors(view: zarr.Group) -> dict[str, str]:
    """The view's other arrays (ids, labels, flags, errors, block_done, extra): name -> why unreadable."""
    features = set(feature_arrays(view))
    bad = {name: LISTING_CHANGED for name in listing_changes(view)}
    for name, node in view.members(max_depth=None):
        if isinstance(node, zarr.Array) and name not in features:
            try:
                node[...]
            except CHUNK_FAILURES as e:
                bad[name] = _reason(e)  # a checksum mismatch says more than a changed digest
    return bad


# ----- content digests: what an artefact was computed from, checked before it is used -----

def _has_checksum(array: zarr.Array) -> bool:
    """A v3 array's codec chain (its compressors included) ends chunks with a crc32c."""
    return any(isinstance(c, Crc32cCodec) for c in getattr(array.metadata, "codecs", ()))


def array_digest(array: zarr.Array) -> str:
    """sha256 standing for an array's content. With crc32c chunks, the stored checksums stand for
    the data (4 bytes read per chunk, so the digest of a store of millions of rows costs
    milliseconds). Plain-zarr arrays of a user's own on a local disk: their chunk files' names,
    sizes and modification times (the change test of git's index and rsync; hashing the decoded
    data took 16 s of a 56 s score at 1e6 x 768); elsewhere the decoded data is hashed."""
    digest = hashlib.sha256(json.dumps([list(array.shape), str(array.dtype)]).encode())
    root = getattr(array.store_path.store, "root", None)
    if _has_checksum(array):
        for key, tail in _chunk_tails(array):
            digest.update(key.encode() + (tail if tail is not None else b"<absent>"))
    elif root is not None:
        digest.update(json.dumps(_chunk_file_stats(os.path.join(str(root), array.store_path.path))).encode())
    else:
        step = max(1, (64 << 20) // max(1, array.nbytes // max(1, array.shape[0])))
        for start in range(0, array.shape[0], step):
            block = np.asarray(array[start:start + step])
            digest.update(block.astype(str).tobytes() if block.dtype == object else block.tobytes())
    return digest.hexdigest()


METADATA_FILES = ("zarr.json", ".zarray", ".zattrs")  # zarr v3 and v2: not chunks


def _chunk_file_stats(folder: str) -> list[list]:
    """[relative path, size, mtime in ns] of every file of an array's folder but its metadata."""
    found = []
    for here, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if here == folder and name in METADATA_FILES:
                continue
            stat = os.stat(os.path.join(here, name))
            found.append([os.path.relpath(os.path.join(here, name), folder), stat.st_size, stat.st_mtime_ns])
    return found


def _chunk_tails(array: zarr.Array) -> list[tuple[str, bytes | None]]:
    """(store key, last 4 bytes or None when absent) of every chunk of the array."""
    keys = [key for _, key in chunk_keys(array)]
    root = getattr(array.store_path.store, "root", None)
    if root is not None:  # a local store: plain file reads, ~20x faster than zarr's async gets
        return [(key, _file_tail(os.path.join(str(root), key))) for key in keys]
    return list(zip(keys, _store_tails(array.store_path.store, keys)))


def _store_tails(store, keys: list[str]) -> list[bytes | None]:
    from zarr.abc.store import SuffixByteRequest
    from zarr.core.buffer import default_buffer_prototype

    async def tails():
        got = await asyncio.gather(*(store.get(k, default_buffer_prototype(), SuffixByteRequest(4))
                                     for k in keys))
        return [None if b is None else b.to_bytes() for b in got]

    return sync(tails())


def _file_tail(path: str) -> bytes | None:
    """The last 4 bytes of a file (what SuffixByteRequest(4) returns), None when absent."""
    try:
        with open(path, "rb", buffering=0) as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4))
            return f.read(4)
    except (FileNotFoundError, NotADirectoryError):
        return None


def view_digest(view: zarr.Group, arrays: list[str]) -> str:
    """Digest of the named arrays of a view (those absent count as absent)."""
    parts = {name: array_digest(view[name]) if name in view else None for name in arrays}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
