"""Decoded batches for extraction, in order, while the backbone runs: in threads (default) or in
DataLoader processes.

Why threads by default: a spawned DataLoader worker must start an interpreter and import torch
before its first image (~2 s on 2 cores, all workers at once), a fixed cost of every run, and
hands each batch through shared memory. Pillow decodes and resizes with the GIL released, so
threads decode in parallel too; what stays under the GIL per image (opening the file, wrapping
the array) is small. `decode=processes` keeps the DataLoader for whatever a thread cannot
parallelise (a Python-heavy image plugin, say).
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable, Iterator

import torch

from .images import ImageFiles, collate_by_shape

DECODE_MODES = ("threads", "processes")


def auto_workers(device: str, cores: int | None = None) -> int:
    """Decode workers only pay off beside an accelerator: on a CPU the backbone already keeps
    every core busy (measured: 1 worker costs ~15% on 2 cores, see benchmarks/extract.py).
    Beside one, up to 8, one per core of `cores` (default: all but the main thread's)."""
    if str(device) == "cpu":
        return 0
    return min(8, max(1, (os.cpu_count() or 2) - 1 if cores is None else cores))


def decoded_batches(files: ImageFiles, batches: Iterable[list[int]], workers: int, mode: str = "threads",
                    pin: bool = False, prefetch: int = 4) -> Iterator[dict]:
    """collate_by_shape batches of `files` for each list of indices in `batches`, in order.
    workers = 0 decodes in the calling thread when a batch is asked for; else `workers` threads
    share the images of the next `prefetch` batches (at least two; a batch's images are spread
    over every thread, so a few batches keep them all busy while bounding the pinned memory), or
    `workers` DataLoader processes keep `prefetch` batches each."""
    if mode not in DECODE_MODES:
        raise ValueError(f"decode={mode!r}: expected one of {', '.join(DECODE_MODES)}")
    if mode == "processes" and workers > 0:
        # spawned, not forked: forking after zarr's event loop started can deadlock
        return iter(torch.utils.data.DataLoader(
            files, batch_sampler=batches, collate_fn=collate_by_shape, num_workers=workers,
            multiprocessing_context="spawn", prefetch_factor=prefetch, pin_memory=pin))
    return ThreadedBatches(files, batches, workers, pin, max(2, prefetch))


class ThreadedBatches:
    """Iterator of batches decoded image by image in a thread pool; a second, single thread
    stacks (and pins) each batch once its images are in, so the caller only takes finished
    batches. At most `ahead` batches are in flight. close() (also on exhaustion) drops the rest."""

    def __init__(self, files: ImageFiles, batches: Iterable[list[int]], workers: int, pin: bool, ahead: int):
        self.files, self.batches, self.pin = files, iter(batches), pin
        self.decoders = ThreadPoolExecutor(workers, thread_name_prefix="decode") if workers else None
        self.collator = ThreadPoolExecutor(1, thread_name_prefix="collate") if workers else None
        self.pending: deque[Future] = deque()
        for _ in range(ahead if workers else 0):
            self._submit()

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.decoders is None:  # no workers: decode now, here
            indices = next(self.batches, None)
            if indices is None:
                raise StopIteration
            return self._collate([self.files[i] for i in indices])
        if not self.pending:
            self.close()
            raise StopIteration
        batch = self.pending.popleft()
        self._submit()
        return batch.result()

    def _submit(self) -> None:
        indices = next(self.batches, None)
        if indices is not None:
            images = [self.decoders.submit(self.files.__getitem__, i) for i in indices]
            self.pending.append(self.collator.submit(lambda: self._collate([f.result() for f in images])))

    def _collate(self, items: list) -> dict:
        batch = collate_by_shape(items)
        if self.pin:
            batch["stacks"] = [(idx, pixels.pin_memory()) for idx, pixels in batch["stacks"]]
        return batch

    def close(self) -> None:
        for pool in (getattr(self, "collator", None), getattr(self, "decoders", None)):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        getattr(self, "pending", deque()).clear()

    def __del__(self):
        self.close()
