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
import torch

from .metrics import (DEFAULT_MEMORY_BUDGET, RetrievalResult, _count_above, _gather_goods,
                      _good_table, _labels, _result)
from .rowreader import DEFAULT_SLAB_BYTES, prefetched_slabs, slab_rows


def score_streamed_queries(queries, gallery, query_labels, gallery_labels, *, ks=(1, 5, 10),
                           topk: int = 0, device="cpu", slab_bytes: int = DEFAULT_SLAB_BYTES,
                           memory_budget: int = DEFAULT_MEMORY_BUDGET) -> RetrievalResult:
    """score_retrieval's metrics and top-k. queries: lazy rows with `.shape`,
    `.read_into(slice, out)` and optionally `.chunks` (e.g. StoredEmbeddings); gallery: a
    (n, d) array or tensor, computed in float64 if it is float64, else float32."""
    dev = torch.device(device)
    g = torch.as_tensor(gallery).detach()
    g = g.to(dev, torch.float64 if g.dtype == torch.float64 else torch.float32).contiguous()
    (n_q, dim), n_gal = queries.shape, g.shape[0]
    _check(dim, g, n_q, ks, topk)
    gl = _labels(gallery_labels, n_gal, "gallery")
    gidx, n_good = _good_table(_labels(query_labels, n_q, "query"), gl)
    junk = torch.from_numpy(np.flatnonzero(gl == -1)).to(dev)
    counts = torch.zeros((n_q, gidx.shape[1]), dtype=torch.int64, device=dev)
    best = (torch.full((n_q, topk), -torch.inf, dtype=g.dtype, device=dev),
            torch.full((n_q, topk), -1, device=dev)) if topk else None
    unit = (getattr(queries, "chunks", None) or (0,))[0]
    item = g.element_size()
    step = min(slab_rows(dim * item, unit, slab_bytes), max(1, memory_budget // (item * n_gal)))
    block = torch.empty(step * n_gal, dtype=g.dtype, device=dev)
    slabs = prefetched_slabs(n_q, step, lambda a, b, out: queries.read_into(slice(a, b), out),
                             lambda: np.empty((step, dim), torch.empty(0, dtype=g.dtype).numpy().dtype))
    for a, b, slab in slabs:
        s = torch.matmul(torch.from_numpy(slab).to(dev), g.T, out=block[: (b - a) * n_gal].view(b - a, n_gal))
        if len(junk):
            s[:, junk] = -torch.inf
        if topk:  # the whole gallery is in this block: its top-k is the answer
            vals, idx = torch.topk(s, min(topk, n_gal), dim=1)
            best[0][a:b, :vals.shape[1]], best[1][a:b, :vals.shape[1]] = vals, idx
        if gidx.shape[1]:
            goods = _gather_goods(s, gidx[a:b], n_good[a:b])
            _count_above(s, goods, gidx[a:b], n_good[a:b], 0, n_gal, counts[a:b])
    return _result(counts, best, n_good, n_gal, ks)


def _check(dim, g, n_q, ks, topk) -> None:
    if g.ndim != 2 or g.shape[1] != dim:
        raise ValueError(f"dimension mismatch: queries have dim {dim}, gallery shape {tuple(g.shape)}")
    if g.shape[0] == 0 or n_q == 0:
        raise ValueError(f"{n_q} queries against {g.shape[0]} gallery items: both must be non-empty")
    if any(not isinstance(k, (int, np.integer)) or k < 1 for k in ks) or topk < 0:
        raise ValueError(f"ks must be positive integers and topk >= 0; got ks={ks}, topk={topk}")
