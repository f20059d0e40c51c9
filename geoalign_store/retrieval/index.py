"""FAISS indices over L2-normalised float32 embeddings (inner product = cosine similarity).

`flat` (IndexFlatIP) is the default: exact, and what the official metrics need. `ivfpq` and
`hnsw` are approximate, for galleries too large to scan (their recall against flat is measured by
benchmarks/score.py --ann). Every type uses the inner-product metric. Flat and IVF-PQ move to the
GPU when faiss was built with GPU support and a CUDA device is visible; HNSW has no FAISS GPU
implementation and stays on the CPU. Embeddings may be any 2-D array-like (numpy, torch, zarr):
they are added in row chunks so a lazily read gallery is never materialised twice.
"""
from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

from ..config import ConfigError
from .multi_vector import search_best

INDEX_TYPES = ("flat", "ivfpq", "hnsw")
DEFAULT_PARAMS = {
    "flat": {},
    "ivfpq": {"nlist": 1024, "m": 64, "nbits": 8, "nprobe": 32},
    "hnsw": {"M": 32, "efConstruction": 200, "efSearch": 128},
}
# One StandardGpuResources a GPU a process, the one owner every GPU use here calls (a search's
# index, training's k-means, a shard's add): each reserves scratch memory (a share of the GPU's)
# when made, so one a call would reserve it again and again; kept alive with the indices made on it
_GPU_RESOURCES: dict[int, object] = {}


class IndexConfigError(ConfigError):
    """An index type or parameters that cannot be built over this gallery (exit 2); the message
    says what fits."""


def gpu_available() -> bool:
    """True when this faiss has GPU support and sees at least one CUDA device."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def gpu_for(device) -> int | None:
    """The CUDA device number faiss should use for `device` (a name from devices.device_name, or
    a torch.device), or None for the CPU: a CPU device, or faiss without GPU support."""
    text = "cpu" if device is None else str(device)
    if not text.startswith("cuda") or not gpu_available():
        return None
    return int(text.split(":", 1)[1]) if ":" in text else 0


def gpu_resources(gpu: int):
    """This process's StandardGpuResources of GPU `gpu`, made on first use."""
    if gpu not in _GPU_RESOURCES:
        _GPU_RESOURCES[gpu] = faiss.StandardGpuResources()
    return _GPU_RESOURCES[gpu]


def gpu_flat_l2(d: int, gpu: int):
    """An empty IndexFlatL2 on GPU `gpu`: the nearest-centroid search of a k-means."""
    return faiss.index_cpu_to_gpu(gpu_resources(gpu), gpu, faiss.IndexFlatL2(d))


def resolve_params(index_type: str, params: dict | None = None) -> dict:
    """Defaults of `index_type` overridden by `params`; ValueError naming the valid choices."""
    if index_type not in INDEX_TYPES:
        raise IndexConfigError(f"unknown index type {index_type!r}; valid types: {', '.join(INDEX_TYPES)}")
    merged = dict(DEFAULT_PARAMS[index_type])
    unknown = sorted(set(params or {}) - set(merged))
    if unknown:
        valid = ", ".join(merged) or "none"
        raise IndexConfigError(f"unknown {index_type} parameter(s) {unknown}; valid: {valid}")
    merged.update(params or {})
    for key, value in merged.items():
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise IndexConfigError(f"{index_type} parameter {key} must be a positive integer, got {value!r}")
    return merged


def build_index(embeddings, index_type: str = "flat", params: dict | None = None, *,
                use_gpu: bool | None = None, train_size: int | None = None,
                add_chunk_size: int = 65536, seed: int = 0, gpu_id: int = 0):
    """An inner-product index holding `embeddings` (row i = id i).

    params: nlist/m/nbits/nprobe (ivfpq), M/efConstruction/efSearch (hnsw). IVF-PQ trains on
    `train_size` seeded random rows (default min(n, 64 x max(nlist, 2^nbits))). use_gpu: None =
    when available."""
    p = resolve_params(index_type, params)
    n, dim = _shape(embeddings)
    if n == 0:
        raise ValueError("empty gallery: cannot build an index over 0 embeddings")
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, p["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = p["efConstruction"]
        index.hnsw.efSearch = p["efSearch"]
    else:
        index = _trained_ivfpq(embeddings, n, dim, p, train_size, seed)
    for start in range(0, n, add_chunk_size):
        index.add(_rows(embeddings, slice(start, min(start + add_chunk_size, n))))
    return to_device(index, use_gpu, gpu_id)


def _trained_ivfpq(embeddings, n, dim, p, train_size, seed):
    if dim % p["m"]:
        fits = [m for m in range(1, min(dim, 64) + 1) if dim % m == 0]
        raise IndexConfigError(f"ivfpq: the embeddings' dim {dim} is not divisible by m={p['m']} "
                               f"(sub-quantizers); m must divide {dim}: index_params.m={fits[-1]} "
                               f"(or {', '.join(map(str, fits[:-1]))}), or index=flat")
    if p["nbits"] > 16:
        raise IndexConfigError(f"ivfpq: nbits must be <= 16, got {p['nbits']}")
    need = max(p["nlist"], 2 ** p["nbits"])
    if n < need:
        lists, bits = 1 << max(0, n.bit_length() - 1), min(8, max(1, n.bit_length() - 1))
        raise IndexConfigError(
            f"ivfpq: {n} embeddings cannot train nlist={p['nlist']} lists and 2^{p['nbits']} PQ "
            f"centroids (need >= {need}); for {n}, e.g. index_params.nlist={lists} "
            f"index_params.nbits={bits}, or index=flat (exact, and fast at this size)")
    # the factory makes the index own its coarse quantizer (no dangling Python reference)
    index = faiss.index_factory(dim, f"IVF{p['nlist']},PQ{p['m']}x{p['nbits']}", faiss.METRIC_INNER_PRODUCT)
    # polysemous training only serves Hamming pre-filtering, which we never use; it costs ~20x
    # the whole rest of training (6.6 s vs 0.3 s on 4096 x 32-d, IVF32,PQ8x6)
    index.do_polysemous_training = False
    size = min(n, train_size or 64 * need)
    rows = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    index.train(_rows(embeddings, rows))
    faiss.extract_index_ivf(index).nprobe = min(p["nprobe"], p["nlist"])
    return index


def to_device(index, use_gpu: bool | None = None, gpu_id: int = 0):
    """Move a flat / IVF-PQ index to GPU `gpu_id` if asked (None: when available); HNSW stays
    on the CPU."""
    want = gpu_available() if use_gpu is None else use_gpu
    if not want or isinstance(index, faiss.IndexHNSW):
        return index
    if not gpu_available():
        raise IndexConfigError("use_gpu=True but faiss has no GPU support or sees no CUDA device")
    nprobe = getattr(index, "nprobe", None)
    gpu_index = faiss.index_cpu_to_gpu(gpu_resources(gpu_id), gpu_id, index)
    if nprobe is not None:
        faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", nprobe)
    return gpu_index


def save_index(index, path) -> None:
    """Write atomically: a temp file beside `path`, then os.replace (no torn index on a kill)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__:
        index = faiss.index_gpu_to_cpu(index)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_index(path, *, use_gpu: bool | None = None, gpu_id: int = 0,
               rebuild: str = "rebuild it with `geoalign index ... overwrite=true`"):
    """Read an index written by save_index (search parameters such as nprobe/efSearch persist);
    a damaged file is a DamagedArtefact naming it and `rebuild`."""
    from .. import store as st
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no FAISS index at {path}")
    return to_device(st.read_faiss_index(path, rebuild), use_gpu, gpu_id)


def search(index, queries, k: int, *, chunk_size: int = 4096):
    """(scores float32, ids int64), each (n_queries, k), best first, in query chunks; ids are -1
    (scores -inf-like) where the index holds fewer than k items or the ANN probe found fewer.
    Queries of K vectors, (n, K, d) (best-of-maps heads): each vector searched, the results
    merged by item at its best score (multi_vector.py; exact for a flat index)."""
    if len(getattr(queries, "shape", ())) == 3:
        return search_best(lambda rows, kk: search(index, rows, kk, chunk_size=chunk_size), queries, k)
    n, dim = _shape(queries)
    if dim != index.d:
        raise ValueError(f"dimension mismatch: queries have dim {dim}, index dim {index.d}")
    if index.ntotal == 0:
        raise ValueError("empty gallery: the index holds no embeddings")
    if k < 1 or chunk_size < 1:
        raise ValueError(f"k and chunk_size must be >= 1, got k={k}, chunk_size={chunk_size}")
    scores = np.empty((n, k), np.float32)
    ids = np.empty((n, k), np.int64)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        scores[start:stop], ids[start:stop] = index.search(_rows(queries, slice(start, stop)), k)
    return scores, ids


def _shape(x):
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != 2:
        raise ValueError(f"embeddings must be 2-D (n, dim), got shape {shape}")
    return shape


def _rows(x, key):
    """Rows of any array-like as the C-contiguous float32 array FAISS requires."""
    block = x[key]
    block = block.detach().cpu().numpy() if hasattr(block, "detach") else np.asarray(block)
    return np.ascontiguousarray(block, dtype=np.float32)
