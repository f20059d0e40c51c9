"""The official metrics for many queries read lazily against a gallery held in memory.

`metrics.score_retrieval` holds the queries and streams the gallery; that suits a gallery of
millions. University-1652's D2S is the other way round: 37,855 drone queries (0.58 GB at
d = 3,840) against 951 satellites (15 MB). Here the gallery is held (on `device`) and the
queries come in slabs of ~32 MB, embedded by a reader thread into reused buffers while the
previous slab is scored, so the queries are never held whole and reading overlaps computing.
Per slab the similarity block, top-k and rank counting are exactly those of score_retrieval.
"""
from __future__ import annotations

import numpy as np

from .block_ops import ops_for, to_numpy
from .multi_vector import block, rows_and_vectors
from .metrics import (DEFAULT_MEMORY_BUDGET, RetrievalResult, _check_ks, _count_above,
                      _empty_topk, _gather_goods, _good_table, _labels, _result)
from ..store import DEFAULT_SLAB_BYTES, prefetched_slabs, slab_rows


def score_streamed_queries(queries, gallery, query_labels, gallery_labels, *, ks=(1, 5, 10),
                           topk: int = 0, device="cpu", slab_bytes: int = DEFAULT_SLAB_BYTES,
                           memory_budget: int = DEFAULT_MEMORY_BUDGET, backend=None,
                           goods=None) -> RetrievalResult:
    """score_retrieval's metrics and top-k. queries: lazy rows with `.shape`,
    `.read_into(slice, out)` and optionally `.chunks` (e.g. StoredEmbeddings); gallery: a
    (n, d) array or tensor, computed in float64 if it is float64, else float32. goods: as
    score_retrieval's (right answers per query given, not labels). Queries of several vectors
    (their `vectors`, the best-of-maps heads' drones) score a satellite by their best."""
    ops = ops_for(device, backend)
    q_vectors = int(getattr(queries, "vectors", 1))
    gallery, g_vectors = rows_and_vectors(gallery)
    g_host = to_numpy(gallery)
    dtype = np.float64 if g_host.dtype == np.float64 else np.float32
    g = ops.asarray(g_host, dtype)
    (n_q, dim), n_gal = queries.shape, g.shape[0]
    _check(dim * g_vectors, g, n_q, ks, topk, q_vectors)
    gl = _labels(gallery_labels, n_gal, "gallery")
    gidx, n_good = goods if goods is not None else _good_table(_labels(query_labels, n_q, "query"), gl)
    junk = ops.index(np.flatnonzero(gl == -1))
    counts = ops.full((n_q, gidx.shape[1]), 0, np.int64)
    best = _empty_topk(ops, n_q, topk, dtype)
    unit = (getattr(queries, "chunks", None) or (0,))[0]
    item = np.dtype(dtype).itemsize
    step = min(slab_rows(dim * item, unit, slab_bytes), max(1, memory_budget // (item * n_gal * q_vectors * g_vectors)))
    sims = ops.empty(step * n_gal, dtype)
    slabs = prefetched_slabs(n_q, step, lambda a, b, out: queries.read_into(slice(a, b), out),
                             lambda: np.empty((step, dim), dtype))
    for a, b, slab in slabs:
        s = block(ops, ops.asarray(slab, dtype), g, q_vectors, g_vectors, sims[: (b - a) * n_gal].reshape(b - a, n_gal))
        if len(junk):
            s[:, junk] = -np.inf
        if topk:  # the whole gallery is in this block: its top-k is the answer
            vals, idx = ops.topk(s, topk)
            best[0][a:b, :vals.shape[1]], best[1][a:b, :vals.shape[1]] = vals, idx
        if gidx.shape[1]:
            goods = _gather_goods(ops, s, gidx[a:b], n_good[a:b])
            _count_above(ops, s, goods, gidx[a:b], n_good[a:b], 0, n_gal, counts[a:b])
    return _result(ops, counts, best, n_good, n_gal, ks)


def _check(dim, g, n_q, ks, topk, q_vectors: int = 1) -> None:
    if g.ndim != 2 or g.shape[1] * q_vectors != dim:
        raise ValueError(f"dimension mismatch: queries have dim {dim}, gallery shape {tuple(g.shape)}")
    if g.shape[0] == 0 or n_q == 0:
        raise ValueError(f"{n_q} queries against {g.shape[0]} gallery items: both must be non-empty")
    _check_ks(ks, topk)
