"""A sharded IVF-PQ index in FAISS's own terms: trained once on a seeded sample (the reduction
first, then the coarse quantizer and the PQ on the reduced sample), filled shard by shard (a copy
of the trained index holding rows [start, stop), ids = gallery positions), merged into on-disk
inverted lists (faiss.contrib.ondisk.merge_ondisk's steps, as faiss's demos/demo_ondisk_ivf.py) that a
search memory-maps, and searched with an optional exact re-ranking of the top R by the full
embeddings (a float32 memory-map beside the index).

The IVF-PQ part uses the L2 metric: on unit vectors |q - x|^2 = 2 - 2 q.x ranks exactly as the
inner product does, and, unlike the inner product, survives the PCA's centring (a translation)
and is what FAISS's residual PQ is tuned for; scores are returned as 1 - |q - x|^2 / 2, the
cosine the codes estimate (exact after re-ranking).

The merged lists are the shards' lists concatenated in shard order, and a shard's codes depend on
the trained index and its own rows only: so the merged index is the one adding every row in
order to the trained index would give, whichever process added which shard, in whatever order.
Files (in an index's folder; the orchestration, resuming and checks are sharded_build.py):
`trained.faiss`, `shards/shard-<start>-<stop>.faiss` (+ `.json`, its sha256, written last),
`vectors.npy`, and the merged `index.faiss` + `index.ivfdata`.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from ..config import file_sha256
from .. import store as st
from .coarse_kmeans import two_level_centroids
from .gpu_add import GpuAdder, GpuAddError
from .index import gpu_flat_l2, save_index
from .ivf_rule import factory_string, train_size
from .seeded_draw import choice_without_replacement

KMEANS_NITER = 10          # coarse k-means iterations (FAISS's default is 25; autofaiss uses 10-25)
REDUCTION_TRAIN = 65536    # rows the OPQ / PCA is trained on (OPQ's own cap is 256 x 256)
SAMPLE_CHUNK_SHARE = 4     # a storage chunk gives the training sample at most ~1/4 of its rows
READ_ROWS = 32768          # rows embedded at a time (a 768-d float32 chunk: 100 MB)
RERANK_QUERIES = 128       # queries re-ranked at a time (R x d float32 each)
# IVF-PQ's L2 search table (nlist x m x 256 floats: 268 MB at IVF4096,PQ64) is rebuilt by every
# read_index; only a search needs it, and only while it fits this (FAISS's own cap is 2 GB)
TABLE_MAX_BYTES = 1 << 29
NO_TABLE = faiss.IO_FLAG_SKIP_PRECOMPUTE_TABLE


def shard_path(folder: Path, start: int, stop: int) -> Path:
    return Path(folder) / "shards" / f"shard-{start:012d}-{stop:012d}.faiss"


def plan_shards(n: int, shard_rows: int) -> list[tuple[int, int]]:
    return [(a, min(a + shard_rows, n)) for a in range(0, n, shard_rows)]


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB): /proc's VmHWM, which starts at the exec; Linux's
    ru_maxrss carries over what the parent held when it forked this process."""
    peak = memory_mb().get("peak")
    return peak if peak is not None else round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def memory_mb() -> dict:
    """This process's memory now (MB): resident anonymous memory (what the process allocated) and
    resident file pages (memory-mapped files it touched: page cache the kernel may reclaim), and
    the peak of their sum so far (VmHWM)."""
    fields = {"VmHWM:": "peak", "RssAnon:": "anon", "RssFile:": "file"}
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":")[0] + ":"
            if key in fields:
                out[fields[key]] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return out


def train(gallery, p: dict, seed: int, gpu: int | None = None, parts: dict | None = None,
          scratch: Path | None = None):
    """The trained, empty index of `p` (ivf_rule) over `gallery` (any row-indexable (n, d)
    array): train_size(n, p) seeded rows, read once, in chunks (reduced_sample); the reduction
    trains on a seeded subset of them and the driver holds the sample at d_out, not d,
    dimensions. `scratch`: the folder of the sample's unnamed spill file (default: the system's
    temporary folder). `parts`: filled with the seconds of each step (reading the sample,
    training the reduction, reducing the sample, clustering and the PQ)."""
    parts = {} if parts is None else parts
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        parts[name] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()

    n, d = gallery.shape
    rng = np.random.default_rng(seed)
    chunks = getattr(gallery, "chunks", None) if p.get("sample") == "chunks" else None
    rows = sample_rows(n, train_size(n, p), int(chunks[0]) if chunks else 0, rng)
    vt = {"opq": lambda: faiss.OPQMatrix(d, p["m"], p["d_out"]),
          "pca": lambda: faiss.PCAMatrix(d, p["d_out"], 0, True), "none": lambda: None}[p["reduce"]]()
    sub = None if vt is None else rows if len(rows) <= REDUCTION_TRAIN else \
        np.sort(rng.choice(rows, REDUCTION_TRAIN, replace=False))
    sample = reduced_sample(gallery, rows, vt, sub, p["d_out"], scratch, lap)
    ivf = faiss.index_factory(p["d_out"], factory_string({**p, "reduce": "none"}, d), faiss.METRIC_L2)
    inner = faiss.extract_index_ivf(ivf)
    inner.cp.niter = KMEANS_NITER
    pq_index = faiss.downcast_index(inner)
    pq_index.do_polysemous_training = False  # Hamming filtering: never used
    pq_index.use_precomputed_table = -1      # no search table: training and adding do not use it
    # the rule (ivf_rule) already sized the codebooks to the sample; FAISS's "at least 39 points
    # a centroid" warnings would only repeat it for galleries of a few hundred
    inner.cp.min_points_per_centroid = pq_index.pq.cp.min_points_per_centroid = 1
    # k-means assignment on the GPU (faiss-gpu; index.py's resources of that GPU); the index
    # stays on the CPU. Held here: the IVF's pointer does not keep the GPU index alive
    clustering = gpu_flat_l2(p["d_out"], gpu) if gpu is not None else None
    if clustering is not None:
        inner.clustering_index = clustering
    if p.get("kmeans") == "two_level":  # a quantizer holding nlist centroids: train() skips k-means
        centroids = two_level_centroids(sample, p["nlist"], KMEANS_NITER, seed, gpu)
        inner.quantizer.train(centroids)
        inner.quantizer.add(centroids)
        lap("two_level_kmeans_s")
    ivf.train(sample)
    lap("ivf_train_s")   # the flat k-means (unless two-level ran), then the PQ
    inner.clustering_index = None
    return ivf if vt is None else faiss.IndexPreTransform(vt, ivf)


def reduced_sample(gallery, rows: np.ndarray, vt, sub: np.ndarray | None, d_out: int,
                   scratch: Path | None = None, lap=lambda name: None) -> np.ndarray:
    """gallery[rows] reduced by `vt` trained on gallery[sub] (sub: sorted rows of `rows`), the
    gallery read once: each chunk of rows as read spilled to an unnamed file (the sample at d
    dimensions: 0.5 GB at 1e6 x 768, 4 GB at 6e7; on disk, not in memory) and the reduction's
    rows kept; the reduction trained, the spill read back a chunk at a time and reduced. The
    chunks are those a read of gallery[rows] alone would make, so the sample is the one two
    reads gave (the reduction's rows, then the sample; each touches every chunk of the store:
    120 s and 42 s of the 179 s of training at 1e7)."""
    sample = np.empty((len(rows), d_out), np.float32)
    if vt is None:
        for a in range(0, len(rows), READ_ROWS):
            block = _read(gallery, rows[a:a + READ_ROWS])
            sample[a:a + len(block)] = block
        lap("sample_read_s")
        return sample
    keep = np.isin(rows, sub)
    train_rows, k = np.empty((int(keep.sum()), gallery.shape[1]), np.float32), 0
    with tempfile.TemporaryFile(dir=scratch) as spill:
        for a in range(0, len(rows), READ_ROWS):
            block = _read(gallery, rows[a:a + READ_ROWS])
            spill.write(memoryview(block).cast("B"))
            picked = block[keep[a:a + READ_ROWS]]
            train_rows[k:k + len(picked)], k = picked, k + len(picked)
        lap("sample_read_s")
        vt.train(train_rows)
        del train_rows
        lap("reduction_s")
        spill.seek(0)
        block = np.empty((min(READ_ROWS, len(rows)), gallery.shape[1]), np.float32)
        for a in range(0, len(rows), READ_ROWS):
            part = block[:min(READ_ROWS, len(rows) - a)]
            spill.readinto(memoryview(part).cast("B"))
            sample[a:a + len(part)] = vt.apply(part)
    lap("sample_s")
    return sample


def sample_rows(n: int, size: int, unit: int, rng) -> np.ndarray:
    """`size` seeded rows of n, sorted, drawn from a seeded subset of the storage chunks of `unit`
    rows (0: not chunked, any rows): as few chunks as give the sample a quarter of their rows.
    Why (`index_params.sample=chunks`): the store decodes whole chunks, so rows drawn from all of
    them read the whole gallery (twice: the reduction's rows, then the sample): 161 of the 179 s
    of training at 1e7, two reads of 3 TB at 1e9. A quarter per chunk keeps the sample spread
    over 4x its size (and costs recall: ivf_rule's docstring)."""
    n_chunks = -(-n // unit) if unit else 0
    need = -(-size * SAMPLE_CHUNK_SHARE // unit) if unit else n_chunks
    if need >= n_chunks:
        return np.sort(choice_without_replacement(rng, n, size))   # (numpy's draw, no arange(n))
    picked = np.sort(rng.choice(n_chunks, need, replace=False))
    starts = picked * unit
    pool = (starts[:, None] + np.arange(unit)).ravel()
    pool = pool[pool < n]
    if len(pool) < size:   # the short last chunk was among few
        return np.sort(choice_without_replacement(rng, n, size))   # (numpy's draw, no arange(n))
    return np.sort(rng.choice(pool, size, replace=False))


def _read(gallery, rows) -> np.ndarray:
    block = gallery[rows]
    return np.ascontiguousarray(block, dtype=np.float32)


def add_shard(folder: Path, start: int, stop: int, gallery, gpu: int | None = None) -> dict:
    """Rows [start, stop) of `gallery` embedded a chunk at a time, added (ids = positions) to a
    copy of trained.faiss and copied into vectors.npy; the shard written whole, then its mark
    (.json: its size and sha256, and the sha256 of its rows of vectors.npy). Re-running it
    rewrites the same bytes: a task may run twice. `gpu`: added on that GPU (gpu_add.py) unless
    faiss-gpu cannot take the index or fails, then on the CPU (`gpu_fallback` says why)."""
    folder = Path(folder)
    t0 = time.perf_counter()
    try:
        index, rows_sha256 = _filled(folder, start, stop, gallery, gpu)
        fallback = None
    except GpuAddError as e:   # refused before any GPU call, or failed on it: redone on the CPU
        fallback = str(e)
        index, rows_sha256 = _filled(folder, start, stop, gallery, None)
    path = shard_path(folder, start, stop)
    save_index(index, path)
    mark = {"start": start, "stop": stop, "ntotal": int(index.ntotal), "bytes": path.stat().st_size,
            "sha256": file_sha256(path), "vectors_sha256": rows_sha256, "pid": os.getpid()}
    st.write_json(path.with_suffix(".json"), mark)
    added_on = "cpu" if gpu is None or fallback else f"cuda:{gpu}"
    return {**mark, "add_s": round(time.perf_counter() - t0, 3), "rss_mb": peak_rss_mb(),
            "added_on": added_on, **({"gpu_fallback": fallback} if fallback else {})}


def _filled(folder: Path, start: int, stop: int, gallery, gpu: int | None):
    """(a copy of trained.faiss holding rows [start, stop), sha256 of the rows as written to
    vectors.npy, which `geoalign check` reads back): on the CPU, or on GPU `gpu`."""
    index = faiss.read_index(str(folder / "trained.faiss"), NO_TABLE)
    adder = GpuAdder(index, gpu) if gpu is not None else None
    vectors = np.load(folder / "vectors.npy", mmap_mode="r+")
    rows_sha256 = hashlib.sha256()
    for a in range(start, stop, READ_ROWS):
        b = min(a + READ_ROWS, stop)
        x = _read(gallery, slice(a, b))
        vectors[a:b] = x
        rows_sha256.update(x)
        ids = np.arange(a, b, dtype=np.int64)
        adder.add(x, ids) if adder else index.add_with_ids(x, ids)
    vectors.flush()
    del vectors
    return (adder.filled() if adder else index), rows_sha256.hexdigest()


def merge(folder: Path, shards: list[tuple[int, int]]) -> dict:
    """The shards' inverted lists merged (in shard order) into index.ivfdata; index.faiss
    written last. -> the merged files' sizes and sha256 (what a later load checks)."""
    folder = Path(folder)
    for name in ("index.faiss", "index.ivfdata"):
        (folder / name).unlink(missing_ok=True)
    trained = faiss.read_index(str(folder / "trained.faiss"), NO_TABLE)
    with stdout_to_stderr():  # OnDiskInvertedLists printf()s its resizing: keep --json's stdout clean
        merge_ondisk(trained, [shard_path(folder, a, b) for a, b in shards], folder / "index.ivfdata")
    save_index(trained, folder / "index.faiss")
    return {name: {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)}
            for name in ("index.faiss", "index.ivfdata")}


def merge_ondisk(trained, shard_files: list[Path], ivfdata: Path) -> None:
    """faiss.contrib.ondisk.merge_ondisk, reading the shards without their search tables (it
    reads them with IO_FLAG_MMAP only: 8 shards of IVF4096,PQ64 rebuilt 2.1 GB of tables)."""
    lists = []
    for path in shard_files:
        shard = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | NO_TABLE)
        ivf = faiss.extract_index_ivf(shard)
        lists.append(ivf.invlists)
        ivf.own_invlists = False  # the lists outlive their index (freed with `shard`, next turn)
    target = faiss.extract_index_ivf(trained)
    assert trained.ntotal == 0, "merges into an empty trained index only"
    ondisk = faiss.OnDiskInvertedLists(target.nlist, target.code_size, str(ivfdata))
    vector = faiss.InvertedListsPtrVector()
    for item in lists:
        vector.push_back(item)
    ntotal = ondisk.merge_from_multiple(vector.data(), vector.size(), False)
    trained.ntotal = target.ntotal = ntotal
    target.replace_invlists(ondisk, True)
    ondisk.this.disown()


@contextlib.contextmanager
def stdout_to_stderr():
    """File descriptor 1 pointed at 2 meanwhile (C code printing past Python's sys.stdout)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def load_merged(folder: Path, nprobe: int, rerank: int = 0) -> "ShardedIndex":
    """The merged index, its inverted lists memory-mapped read-only from index.ivfdata in the
    same folder (wherever the store has moved since), nprobe set; with rerank > 0 the full
    embeddings (vectors.npy, memory-mapped) re-rank the top `rerank` exactly."""
    folder = Path(folder)
    index = faiss.read_index(str(folder / "index.faiss"), faiss.IO_FLAG_SKIP_IVF_DATA | NO_TABLE)
    ivf = faiss.extract_index_ivf(index)
    pq_index = faiss.downcast_index(ivf)
    if ivf.nlist * pq_index.pq.M * pq_index.pq.ksub * 4 <= TABLE_MAX_BYTES:
        pq_index.precompute_table()   # faster L2 scans
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    lists.filename = str(folder / "index.ivfdata")
    lists.read_only = True
    lists.do_mmap()
    ivf.nprobe = min(int(nprobe), ivf.nlist)
    quantizer = faiss.downcast_index(ivf.quantizer)
    if isinstance(quantizer, faiss.IndexHNSW):
        quantizer.hnsw.efSearch = max(quantizer.hnsw.efSearch, 2 * ivf.nprobe)
    vectors = random_access(np.load(folder / "vectors.npy", mmap_mode="r")) if rerank else None
    return ShardedIndex(index, vectors, int(rerank))


def random_access(vectors: np.memmap) -> np.memmap:
    """The re-ranking reads ~R scattered rows a query: told to the kernel (MADV_RANDOM), each
    page fault reads its page, not the device's read-ahead around it (8 MB here: 100 rows of a
    30 GB vectors.npy read 240 ms cold, 25 ms with the advice, at 1e7 x 768)."""
    handle = getattr(vectors, "_mmap", None)
    if handle is not None and hasattr(mmap, "MADV_RANDOM"):
        handle.madvise(mmap.MADV_RANDOM)
    return vectors


class ShardedIndex:
    """What `index.search` needs of a FAISS index (d, ntotal, search(x, k)), with the top
    max(k, rerank) of the codes re-ranked by the exact inner product when rerank > 0."""

    def __init__(self, index, vectors, rerank: int):
        self.index, self.vectors, self.rerank = index, vectors, rerank
        self.d, self.ntotal = index.d, index.ntotal

    def search(self, x: np.ndarray, k: int):
        if not self.rerank:
            dist, ids = self.index.search(x, k)
            return np.where(ids >= 0, 1 - dist / 2, -np.finfo(np.float32).max).astype(np.float32), ids
        _, ids = self.index.search(x, max(k, self.rerank))
        return rerank_exact(x, ids, self.vectors, k)


def rerank_exact(x: np.ndarray, ids: np.ndarray, vectors, k: int):
    """(scores, ids) of the best k of each query's candidates `ids` (-1: none) by the exact
    inner product with vectors[ids]; candidates read once per chunk, in row order."""
    n = len(x)
    out_s = np.full((n, k), -np.finfo(np.float32).max, np.float32)
    out_i = np.full((n, k), -1, np.int64)
    for a in range(0, n, RERANK_QUERIES):
        cand = ids[a:a + RERANK_QUERIES]
        unique, inverse = np.unique(np.maximum(cand, 0), return_inverse=True)
        rows = np.asarray(vectors[unique], np.float32)[inverse.reshape(cand.shape)]
        scores = np.einsum("qd,qrd->qr", x[a:a + RERANK_QUERIES], rows)
        scores[cand < 0] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        got = np.take_along_axis(scores, top, 1)
        found = np.isfinite(got)
        width = top.shape[1]
        out_s[a:a + len(cand), :width] = np.where(found, got, out_s[a:a + len(cand), :width])
        out_i[a:a + len(cand), :width] = np.where(found, np.take_along_axis(cand, top, 1), -1)
    return out_s, out_i
