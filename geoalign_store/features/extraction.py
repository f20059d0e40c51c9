"""The extraction engine: blocks of images -> descriptors, in-process or as dask tasks.

A `BlockJob` is the unit of work, of writing and of resuming. Both runners cut a job into the
same batches (consecutive rows, `batch_size` at a time, never across blocks), so a resumed or a
distributed run computes every image in exactly the batch it would have had uninterrupted.
"""

from __future__ import annotations

import bisect
import itertools
import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import store as st
from ..config import ConfigError
from .backbone import Backbone, gem_descriptor, layer_tokens, load_backbone, pool_tokens
from .decoding import auto_workers, decoded_batches
from .images import ImageFiles, normalise
from .map_tiles import MapSource, MapTiles


@dataclass
class BlockJob:
    view_path: str                # the view's group in the store
    block: int
    paths: list[str]              # absolute image paths of the block's rows, in row order
    offset: int = 0               # flat index of the job's first image in a multi-job run
    windows: np.ndarray | None = None  # map tiles: (n, 5) file, col_off, row_off, width, height


@dataclass
class EncodeOptions:
    channels: int
    store_tokens: bool = False
    token_pool: int = 1
    image_size: object = None
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    map_source: MapSource | None = None  # set: the jobs are map tiles read from these files


def plan_jobs(group, data_root: Path, pending: list[int], offset: int = 0) -> list[BlockJob]:
    """Jobs of the pending blocks of one view, numbered from flat index `offset`."""
    ids = [str(i) for i in group["ids"][:]]
    jobs = []
    for block in pending:
        rows = st.block_rows(group, block)
        paths = [str(data_root / i) for i in ids[rows]]
        jobs.append(BlockJob(group.path, block, paths, offset))
        offset += len(paths)
    return jobs


def plan_tile_jobs(group, pending: list[int], offset: int = 0) -> list[BlockJob]:
    """Jobs of the pending blocks of a map's tile view: each row a window (store/map_tiles.py)."""
    ids = st.read_meta(group, "ids")
    windows = np.concatenate([st.read_meta(group, "tiles/file")[:, None].astype(np.int64),
                              st.read_meta(group, "tiles/window")], axis=1)
    jobs = []
    for block in pending:
        rows = st.block_rows(group, block)
        jobs.append(BlockJob(group.path, block, [str(i) for i in ids[rows]], offset, windows[rows]))
        offset += rows.stop - rows.start
    return jobs


def pixel_source(jobs: list[BlockJob], opts: EncodeOptions):
    """What decodes the jobs' rows by flat index: image files, a map's windows, or (a map with
    its photos) both, each job read by its own kind."""
    parts, start = [], 0
    for tiles, group in itertools.groupby(jobs, key=lambda j: j.windows is not None):
        group = list(group)
        if tiles:
            part = MapTiles(opts.map_source, np.concatenate([j.windows for j in group]), opts.image_size)
        else:
            part = ImageFiles([p for j in group for p in j.paths], opts.image_size)
        parts.append((start, part))
        start += len(part)
    return parts[0][1] if len(parts) == 1 else _JobRows(parts)


class _JobRows(torch.utils.data.Dataset):
    """Consecutive row sources as one, by flat index."""

    def __init__(self, parts: list[tuple[int, object]]):
        self.parts, self.starts = parts, [s for s, _ in parts]

    def __len__(self) -> int:
        return self.starts[-1] + len(self.parts[-1][1])

    def __getitem__(self, index: int):
        start, part = self.parts[bisect.bisect_right(self.starts, index) - 1]
        _, pixels, error = part[index - start]
        return index, pixels, error


def job_batches(jobs: list[BlockJob], batch_size: int) -> list[list[int]]:
    """Flat image indices of every batch: consecutive rows of one block, batch_size at a time."""
    return [list(range(j.offset + s, j.offset + min(s + batch_size, len(j.paths))))
            for j in jobs for s in range(0, len(j.paths), batch_size)]


def encode_stack(bb: Backbone, pixels: torch.Tensor, opts: EncodeOptions) -> dict[str, np.ndarray]:
    """Descriptors of one stack of same-sized uint8 images (read_rgb), keyed like the store's
    arrays."""
    return start_encode(bb, pixels, opts).result()


class _Encoded:
    """Outputs of one stack on their way to host memory: on a GPU the copies are queued behind
    the forward (non-blocking, pinned) and only `result()` waits for them, so the caller can
    queue the next batch first and the GPU never idles while the host collects results."""

    def __init__(self, tensors: dict[str, torch.Tensor], device: torch.device):
        self.event = None
        if device.type == "cuda":
            tensors = {k: v.to("cpu", non_blocking=True) for k, v in tensors.items()}
            self.event = torch.cuda.Event()
            self.event.record()
        self.tensors = tensors

    def result(self) -> dict[str, np.ndarray]:
        if self.event is not None:
            self.event.synchronize()
        return {k: v.numpy() for k, v in self.tensors.items()}


def start_encode(bb: Backbone, pixels: torch.Tensor, opts: EncodeOptions) -> _Encoded:
    grid = (pixels.shape[-2] // bb.patch_size, pixels.shape[-1] // bb.patch_size)
    out = {}
    with torch.inference_mode():
        # uint8 crosses to the device; it is normalised there (bitwise as on the host).
        x = normalise(pixels.to(bb.device, non_blocking=True), opts.mean, opts.std)
        for k, tokens in layer_tokens(bb, x).items():
            patches = tokens[:, 1 + bb.n_registers:]
            out[f"layer_{k}/cls"] = tokens[:, 0]
            out[f"layer_{k}/desc"] = gem_descriptor(patches)
            if opts.store_tokens:
                out[f"layer_{k}/tokens"] = pool_tokens(patches, grid, opts.token_pool).half()
    return _Encoded(out, bb.device)


@dataclass
class _Pending:
    job: BlockJob
    batches_left: int
    arrays: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)


class BlockWriter:
    """Writes finished blocks on one background thread, so the backbone never waits on zarr.
    At most `depth` finished blocks wait (bounded memory: the producer blocks beyond that). A
    failed write stops later writes and is raised in the producer at its next submit or at
    close; blocks queued before it are still written (nothing computed is dropped)."""

    def __init__(self, depth: int = 2):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.busy_s = 0.0
        self.thread = threading.Thread(target=self._loop, name="geoalign-block-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (write := self.queue.get()) is not None:
            if self.error is None:
                t0 = time.perf_counter()
                try:
                    write()
                except BaseException as e:  # noqa: BLE001  (re-raised in the producer)
                    self.error = e
                self.busy_s += time.perf_counter() - t0

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(self, write: Callable[[], None]) -> None:
        self._raise()
        self.queue.put(write)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self._raise()


class BlockAssembler:
    """Collects a block's batches and writes the block whole as soon as its last batch is in
    (through `submit`, e.g. a BlockWriter's; None: at once, in this thread)."""

    def __init__(self, jobs: list[BlockJob], batch_size: int, open_group: Callable,
                 on_block: Callable[[BlockJob, int], None] | None = None,
                 submit: Callable[[Callable[[], None]], None] | None = None):
        self.pending = {j.offset: _Pending(j, -(-len(j.paths) // batch_size), errors=[""] * len(j.paths))
                        for j in jobs}
        self.starts = sorted(self.pending)
        self.open_group, self.on_block = open_group, on_block
        self.submit = submit or (lambda write: write())
        self.in_flight = None

    def _owner(self, index: int) -> _Pending:
        return self.pending[self.starts[np.searchsorted(self.starts, index, side="right") - 1]]

    def add(self, bb: Backbone, batch: dict, opts: EncodeOptions) -> None:
        """Queue the batch's forward, then collect the previous batch's results (one batch in
        flight: see _Encoded). `close()` collects the last one."""
        launched = [(indices, start_encode(bb, pixels, opts)) for indices, pixels in batch["stacks"]]
        self.close()
        self.in_flight = (batch, launched, opts)

    def close(self) -> None:
        if self.in_flight is not None:
            batch, launched, opts = self.in_flight
            self.in_flight = None
            self._collect(batch, launched, opts)

    def _collect(self, batch: dict, launched: list, opts: EncodeOptions) -> None:
        if not batch["indices"]:
            return
        owner = self._owner(batch["indices"][0])
        for index, error in batch["errors"].items():
            owner.errors[index - owner.job.offset] = error
        for indices, encoded in launched:
            rows = np.asarray(indices) - owner.job.offset
            for name, values in encoded.result().items():
                if name not in owner.arrays:
                    owner.arrays[name] = np.zeros((len(owner.job.paths), *values.shape[1:]), values.dtype)
                owner.arrays[name][rows] = values
        owner.batches_left -= 1
        if owner.batches_left == 0:
            self._flush(owner, opts)

    def _flush(self, owner: _Pending, opts: EncodeOptions) -> None:
        del self.pending[owner.job.offset]
        self.submit(lambda: self._write(owner, opts))

    def _write(self, owner: _Pending, opts: EncodeOptions) -> None:
        group = self.open_group(owner.job.view_path)
        # A block whose every image failed still gets (zero) arrays of the right width.
        arrays = owner.arrays or {n: np.zeros((len(owner.job.paths), opts.channels), np.float32)
                                  for n in _desc_names(group)}
        st.write_block(group, owner.job.block, arrays, owner.errors)
        if self.on_block:
            self.on_block(owner.job, sum(bool(e) for e in owner.errors))


def _desc_names(group) -> list[str]:
    return [f"layer_{k}/{kind}" for k in group.attrs["layers"] for kind in ("desc", "cls")]


def run_in_process(load: Callable[[], Backbone], jobs: list[BlockJob], opts: EncodeOptions,
                   batch_size: int, num_workers: int, open_group: Callable, on_block=None,
                   decode: str = "threads") -> dict:
    """Decode in worker threads (or DataLoader processes, decoding.decoded_batches) while the
    main thread runs the backbone and a writer thread writes finished blocks. The workers start
    before the backbone is loaded, so their first batches overlap the weights loading.
    -> where the time went (seconds; `steady_*`: every batch after the first)."""
    clock = Clock()
    paths = [p for j in jobs for p in j.paths]
    batches = decoded_batches(pixel_source(jobs, opts), job_batches(jobs, batch_size),
                              num_workers, decode, pin=torch.cuda.is_available())
    clock.lap("workers_start_s")
    bb = load()
    clock.lap("backbone_load_s")
    writer = BlockWriter()
    assembler = BlockAssembler(jobs, batch_size, open_group, on_block, writer.submit)
    try:
        first = next(batches, None)
        clock.lap("first_batch_wait_s")   # what the decode workers still needed for batch one
        if first is not None:
            _first_batch(assembler, bb, first, opts)
            clock.lap("first_batch_compute_s")
        for batch in batches:
            assembler.add(bb, batch, opts)
        assembler.close()
        clock.lap("steady_s")
        clock.times["steady_images"] = len(paths) - (len(first["indices"]) if first else 0)
    finally:
        getattr(batches, "close", lambda: None)()  # threads: queued decodes are dropped
        writer.close()
    clock.lap("write_tail_s")             # writes still queued after the last batch
    clock.times["writes_busy_s"] = round(writer.busy_s, 3)
    return clock.times


def _first_batch(assembler: BlockAssembler, bb: Backbone, batch: dict, opts: EncodeOptions) -> None:
    """The first batch alone (timed apart: it includes the device's first-call set-up and any
    compilation). torch.compile failing there (no C++ compiler, an op it cannot lower) is a
    set-up problem, so it is said as one; blocks already in the store are untouched."""
    try:
        assembler.add(bb, batch, opts)
        assembler.close()
    except RuntimeError as e:
        # dynamo's and inductor's errors derive from TorchDynamoException; anything else (a
        # device out of memory, ...) is not the compiler's and is raised as it is
        from torch._dynamo.exc import TorchDynamoException
        if not (bb.compiled and isinstance(e, TorchDynamoException)):
            raise
        why = (str(e).strip().splitlines() or [""])[0][:300]
        raise ConfigError(f"compile=true: torch.compile failed on the first batch ({type(e).__name__}: "
                          f"{why}); nothing of this run was written. Rerun without compile=true") from None


class Clock:
    """Seconds between consecutive laps, by name (a run's breakdown of where the time went)."""

    def __init__(self):
        self.times: dict = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = round(now - self.last, 3)
        self.last = now


_WORKER_BACKBONES: dict[str, Backbone] = {}
def block_task(store_url: str, job: BlockJob, backbone_args: dict, opts: EncodeOptions,
               batch_size: int, threads: int | None = None) -> int:
    """One dask task: encode and write one block; the worker keeps its backbone between tasks.
    Returns the number of images that failed to decode."""
    from .worker_devices import worker_device  # dask's modules: only where dask runs
    if threads:
        torch.set_num_threads(threads)
    if worker_device() is not None:
        backbone_args = {**backbone_args, "device": worker_device()}
    key = repr(sorted(backbone_args.items()))
    if key not in _WORKER_BACKBONES:
        _WORKER_BACKBONES[key] = load_backbone(**backbone_args)
    bb = _WORKER_BACKBONES[key]
    job = replace(job, offset=0)
    files = pixel_source([job], opts)
    failed = []
    root = st.open_store(store_url, mode="r+")
    assembler = BlockAssembler([job], batch_size, lambda p: root[p],
                               lambda _, n: failed.append(n))
    # beside a GPU, threads decode the block's next batches while one runs (on a CPU the
    # backbone already has the worker's cores)
    workers = auto_workers(bb.device.type, cores=threads or os.cpu_count() or 1)
    batches = decoded_batches(files, job_batches([job], batch_size), workers, pin=bb.device.type == "cuda")
    try:
        for batch in batches:
            assembler.add(bb, batch, opts)
        assembler.close()
    finally:
        batches.close()
    return failed[0]

