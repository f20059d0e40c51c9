"""Rows of a stored array read in bounded pieces, and slabs of embeddings prefetched by a thread.

Why bounded: zarr decodes every chunk a request touches, up to `async.concurrency` of them at
once, so one request for rows spread over a 1e6-row gallery in 50,000-row zstd chunks decodes
~10 x 150 MB at a time. Here a request never spans more than `max_bytes` of rows (rounded to
whole storage chunks, at least one): memory is bounded by the request, whatever the chunking.

Why slabs: reading ~30 MB at a time into buffers that are reused keeps the data in cache-sized
pieces and avoids the page faults of freshly allocated 0.5 GB arrays, which cost as much as the
read itself; a reader thread fills the next slab while the caller computes on this one.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

import numpy as np

DEFAULT_READ_BYTES = 64 << 20   # rows of one request to the store (whole chunks, at least one)
DEFAULT_SLAB_BYTES = 32 << 20   # embedded rows per prefetched slab


def row_chunk(array) -> int:
    """Rows per storage chunk (the unit zarr decodes; the inner chunk of a sharded array);
    0 when the array is not chunked (numpy, memmap)."""
    chunks = getattr(array, "chunks", None)
    return int(chunks[0]) if chunks else 0


def rows_per_request(array, max_bytes: int) -> int:
    """Rows one request may span: ~max_bytes of the array's rows, in whole chunks."""
    row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * np.dtype(array.dtype).itemsize
    rows = max(1, max_bytes // max(row_bytes, 1))
    unit = row_chunk(array)
    return max(unit, rows // unit * unit) if unit else rows


def read_rows(array, rows: np.ndarray, out: np.ndarray | None = None,
              max_bytes: int = DEFAULT_READ_BYTES) -> np.ndarray:
    """array[rows] as float32 (len(rows), C) in `out` (any writable view, e.g. columns of a wider
    buffer) or a new array, with requests `array[lo:hi]` of at most rows_per_request rows, each
    inside one chunk-aligned window. Rows must be ascending (duplicates allowed)."""
    rows = np.asarray(rows, dtype=np.int64)
    if out is None:
        out = np.empty((len(rows), *array.shape[1:]), np.float32)
    if len(rows) and np.any(rows[1:] < rows[:-1]):
        raise ValueError("read_rows needs ascending row indices")
    span = rows_per_request(array, max_bytes)
    unit = row_chunk(array) or 1
    i = 0
    while i < len(rows):
        window_end = rows[i] // unit * unit + span
        j = int(np.searchsorted(rows, window_end, side="left"))
        lo, hi = int(rows[i]), int(rows[j - 1]) + 1
        dense = hi - lo == j - i and bool(np.all(np.diff(rows[i:j]) == 1))
        if dense and hasattr(array, "read_into"):  # straight into place (store.CheckedArray)
            array.read_into(lo, hi, out[i:j])
        else:
            block = np.asarray(array[lo:hi])
            out[i:j] = block if dense else block[rows[i:j] - lo]
        i = j
    return out


def slab_rows(row_bytes: int, unit: int, slab_bytes: int = DEFAULT_SLAB_BYTES) -> int:
    """Rows per slab: ~slab_bytes of output rows, a multiple of the storage chunk when one fits."""
    rows = max(1, slab_bytes // max(row_bytes, 1))
    return rows // unit * unit if unit and rows >= unit else rows


def prefetched_slabs(n: int, step: int, fill: Callable[[int, int, np.ndarray], None],
                     buffer: Callable[[], np.ndarray], depth: int = 2) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, rows) for consecutive slabs of `step` rows of n; a thread calls
    fill(start, stop, out) into one of depth + 1 reused buffers while the caller works on the
    previous slab. A slab is valid until the next one is asked for. Errors in the reader are
    raised here; leaving the loop early stops the reader."""
    free: queue.Queue = queue.Queue()
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    for _ in range(depth + 1):
        free.put(buffer())

    def reader():
        try:
            for a in range(0, n, step):
                b = min(a + step, n)
                out = free.get()
                if stop.is_set():
                    return
                fill(a, b, out[: b - a])
                ready.put((a, b, out))
        except BaseException as e:  # handed to the consumer, which raises it
            ready.put(e)

    thread = threading.Thread(target=reader, name="geoalign-slab-reader", daemon=True)
    thread.start()
    try:
        for _ in range(0, n, step):
            item = ready.get()
            if isinstance(item, BaseException):
                raise item
            a, b, out = item
            yield a, b, out[: b - a]
            free.put(out)
    finally:
        stop.set()
        free.put(np.empty(0, np.float32))  # wakes a reader waiting for a buffer
        while thread.is_alive():
            try:
                ready.get(timeout=0.05)  # unblocks a reader waiting to hand over a slab
            except queue.Empty:
                pass
