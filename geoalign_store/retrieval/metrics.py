"""University-1652's official retrieval metrics, vectorised, chunked and streamable.

Definitions (SPEC §5; `evaluate_gpu.py` of layumi/University1652-Baseline). Per query the gallery
is ranked by descending inner product (cosine on L2-normalised embeddings); junk items (label -1)
are dropped from the ranking; "good" items carry the query's label; r_0 < r_1 < ... are their
0-based ranks. CMC(k) = [r_0 < k]; Recall@K = sum CMC(K) / n_queries, where a query without any
good item adds 0 but stays in the denominator; Recall@1% is the CMC entry at 0-based index
round(0.01 x gallery size incl. junk) (Python's round, so 150 -> 2, 250 -> 2); `ap` is the
script's trapezoidal AP, sum_i (p_prev + p_i) / (2 n_good) with p_i = (i+1)/(r_i+1) and
p_prev = i/r_i (1 if r_i = 0); `ap_noninterp` = mean_i (i+1)/(r_i+1) (the GeoAlign release's).
A query labelled -1 has no good item by definition (the official script would crash on it).

How (why it is fast): nothing is argsorted per query. On tie-free data the rank of good item i is
r_i = i + #{non-junk, non-good j : s_j > g_i}, g_0 > g_1 > ... the good scores. For a chunk of
queries x gallery we take the good scores and set junk and good columns to -inf. With at most
COMPARE_SLOTS goods per query (D2S: one) a comparison count per good, (s > g_i).sum(), gives
the ranks. With more (S2D), only the entries above a query's lowest good can count: those are
sorted as order-preserving integer keys offset by row (all rows at once) and one searchsorted
finds every good (on a GPU: torch.sort and a batched searchsorted). The counts are additive over
gallery chunks, which gives the streaming. On the CPU the blocks are numpy arrays (no torch import);
`device=` runs the blocks, top-k and counting on a GPU in torch (block_ops: one algorithm, two
array backends); the results on the CPU do not depend on it.
Ties: a non-good item with exactly a good item's score ranks below it (the script's order of
tied items is that of an unstable argsort, i.e. unspecified).

Memory and streaming: only a (query chunk x gallery chunk) block of similarities exists at a
time, sized from `memory_budget` (default 256 MB). Queries are held in memory; the gallery may be
any 2-D array-like with `.shape` that supports `g[a:b]` and `g[int_array]` (numpy, torch, zarr,
memmap, or a lazy reader). In-memory galleries are one chunk; others are read chunk by chunk,
exactly once (outer loop over gallery chunks, inner over query chunks), in whole storage chunks
when the array has `.shards`/`.chunks` (zarr). When there is more than
one gallery chunk, the good scores are computed first from the good rows alone (`g[idx]`, cheap:
n_queries x goods dot products), so one pass over the gallery suffices for exact ranks and an
optional running top-k. Peak memory ~ queries + gallery chunk + similarity block.
Inputs must be finite (the store refuses NaN/Inf before this point).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .block_ops import ops_for, to_numpy
from .multi_vector import block, pair_dots, rows_and_vectors

DEFAULT_MEMORY_BUDGET = 256 << 20  # bytes of one similarity block (and of one gallery chunk)
# Up to this many goods per query, counting the items above each good score by comparison
# (slots x n per row) is cheaper than sorting; U1652 D2S has one good per query.
COMPARE_SLOTS = 4


@dataclass
class RetrievalResult:
    """Metrics dict (None without labels) and, if asked, the top-k gallery rows per query
    (junk excluded; index -1 / score -inf where fewer than k non-junk items exist)."""

    metrics: dict | None
    topk_indices: np.ndarray | None = None
    topk_scores: np.ndarray | None = None


def recall_1pct_index(n_gallery: int) -> int:
    """0-based CMC index of Recall@1%, exactly the script's `round(len(gallery_label)*0.01)`."""
    return round(n_gallery * 0.01)


def retrieval_metrics(query_emb, gallery_emb, query_labels, gallery_labels, *, ks=(1, 5, 10),
                      chunk_size=None, gallery_chunk_size=None,
                      memory_budget=DEFAULT_MEMORY_BUDGET) -> dict:
    """Official metrics of a query set against a gallery (see module docstring).

    Returns {"n_queries", "n_gallery" (incl. junk), "n_queries_without_match",
    "recall": {"1", "5", "10", "1%"}, "ap", "ap_noninterp"}, rates as fractions in [0, 1].
    chunk_size: queries per block (default from memory_budget); gallery_chunk_size: rows per
    gallery read (default: all of an in-memory gallery, else from memory_budget)."""
    return score_retrieval(query_emb, gallery_emb, query_labels, gallery_labels, ks=ks,
                           chunk_size=chunk_size, gallery_chunk_size=gallery_chunk_size,
                           memory_budget=memory_budget).metrics


def topk_gallery(query_emb, gallery_emb, k, *, gallery_labels=None, chunk_size=None,
                 gallery_chunk_size=None, memory_budget=DEFAULT_MEMORY_BUDGET):
    """(indices, scores) of the k most similar non-junk gallery rows per query, best first."""
    res = score_retrieval(query_emb, gallery_emb, None, gallery_labels, topk=k,
                          chunk_size=chunk_size, gallery_chunk_size=gallery_chunk_size,
                          memory_budget=memory_budget)
    return res.topk_indices, res.topk_scores


def score_retrieval(query_emb, gallery_emb, query_labels=None, gallery_labels=None, *,
                    ks=(1, 5, 10), topk=0, chunk_size=None, gallery_chunk_size=None,
                    memory_budget=DEFAULT_MEMORY_BUDGET, device="cpu", backend=None,
                    goods=None) -> RetrievalResult:
    """One streamed pass over the gallery giving the metrics (if query_labels or goods) and the
    top-k. device: where the similarity blocks, the top-k and the rank counting run (a
    torch.device or its name); the gallery is read on the CPU and each chunk moved there.
    backend="torch" runs the GPU code path on the CPU (tests). goods: (gallery positions per
    query, padded; count per query) when right answers are not a shared label (a map's tiles).
    Items of several vectors (3-D (n, K, d), or a lazy gallery with `vectors`: the best-of-maps
    heads) score as their best pair of vectors (multi_vector.py)."""
    ops = ops_for(device, backend)
    query_emb, q_vectors = rows_and_vectors(query_emb)
    gallery_emb, g_vectors = rows_and_vectors(gallery_emb)
    q, n_gal, dtype = _check_inputs(query_emb, gallery_emb, ks, topk, (q_vectors, g_vectors))
    gallery_emb = to_numpy(gallery_emb) if hasattr(gallery_emb, "detach") else gallery_emb
    n_q = q.shape[0]
    gl = np.zeros(n_gal, np.int64) if gallery_labels is None else _labels(gallery_labels, n_gal, "gallery")
    with_metrics = query_labels is not None or goods is not None
    if goods is not None:
        gidx, n_good = goods
    elif with_metrics:
        gidx, n_good = _good_table(_labels(query_labels, n_q, "query"), gl)
    else:
        gidx, n_good = np.zeros((n_q, 0), np.int64), None
    n_slots = gidx.shape[1]
    junk = np.flatnonzero(gl == -1)
    g_step, q_step = _plan_chunks(gallery_emb, q, chunk_size, gallery_chunk_size, memory_budget)
    if not chunk_size:   # a block of several vectors an item passes through one K times larger
        q_step = max(1, q_step // (q_vectors * g_vectors))
    # several gallery chunks: good scores must be known before any chunk is counted
    good_scores = ops.asarray(_pair_scores(q, gallery_emb, gidx, n_good, memory_budget, (q_vectors, g_vectors)),
                              dtype) if (n_slots and g_step < n_gal) else None
    counts = ops.full((n_q, n_slots), 0, np.int64)
    best = _empty_topk(ops, n_q, topk, dtype)
    buf = ops.empty(q_step * g_step, dtype)
    qd = ops.asarray(q, dtype)
    for g0 in range(0, n_gal, g_step):
        g1 = min(g0 + g_step, n_gal)
        gc = None  # drop the previous chunk before reading the next: one chunk alive at a time
        gc = ops.asarray(_read_rows(gallery_emb, slice(g0, g1), dtype), dtype)
        jc = ops.index(junk[(junk >= g0) & (junk < g1)] - g0)
        for q0 in range(0, n_q, q_step):
            q1 = min(q0 + q_step, n_q)
            s = block(ops, qd[q0:q1], gc, q_vectors, g_vectors, buf[: (q1 - q0) * (g1 - g0)].reshape(q1 - q0, g1 - g0))
            if len(jc):
                s[:, jc] = -np.inf
            if topk:
                _merge_topk(ops, best, q0, q1, s, g0, topk)
            if n_slots:
                gs = good_scores[q0:q1] if good_scores is not None else _gather_goods(ops, s, gidx[q0:q1], n_good[q0:q1])
                _count_above(ops, s, gs, gidx[q0:q1], n_good[q0:q1], g0, g1, counts[q0:q1])
    # rank of good i = non-goods above it (counted) + i (the goods above it, masked when counting)
    return _result(ops, counts, best, n_good, n_gal, ks, with_metrics)


def _empty_topk(ops, n_q, topk, dtype):
    return (ops.full((n_q, topk), -np.inf, dtype), ops.full((n_q, topk), -1, np.int64)) if topk else None


def _result(ops, counts, best, n_good, n_gal, ks, with_metrics=True) -> RetrievalResult:
    """Metrics from the counted ranks and the top-k (junk-padded slots as -1), on the CPU."""
    n_slots = counts.shape[1]
    metrics = metrics_from_ranks(ops.numpy(counts) + np.arange(n_slots), n_good, n_gal, ks) if with_metrics else None
    if best is None:
        return RetrievalResult(metrics)
    scores, indices = ops.numpy(best[0]), ops.numpy(best[1])
    return RetrievalResult(metrics, np.where(np.isneginf(scores), -1, indices), scores)


def _plan_chunks(gallery, q, chunk_size, gallery_chunk_size, budget):
    """(gallery rows per read, queries per block): an in-memory gallery is one chunk; a lazy one
    is read in ~budget bytes, rounded to whole storage chunks/shards; a similarity block is
    ~budget bytes."""
    n_gal, item = gallery.shape[0], q.itemsize
    in_memory = isinstance(gallery, np.ndarray)
    g_step = int(gallery_chunk_size or (n_gal if in_memory else max(1, budget // (q.shape[1] * item))))
    row_chunk = (getattr(gallery, "shards", None) or getattr(gallery, "chunks", None) or (0,))[0]
    if not in_memory and not gallery_chunk_size and row_chunk:
        g_step = max(row_chunk, g_step // row_chunk * row_chunk)
    g_step = min(g_step, n_gal)
    # storage chunks above the budget (e.g. 200,000-row zstd chunks) make the gallery block read
    # bigger: the similarity block shrinks so that the two together stay within 2 x budget
    block_budget = budget if in_memory else min(budget, max(budget // 8, 2 * budget - g_step * q.shape[1] * item))
    return g_step, min(q.shape[0], int(chunk_size or max(1, block_budget // (g_step * item))))


def metrics_from_ranks(ranks, n_good, n_gallery, ks=(1, 5, 10)) -> dict:
    """The official CMC/AP sums from the good items' 0-based ranks (n_queries x slots, ascending
    per row; the first n_good[q] entries of row q are valid). Pure; float64 sums."""
    ranks = np.asarray(ranks, dtype=np.float64)
    n_q, n_slots = ranks.shape
    n_good = np.asarray(n_good)
    has = n_good > 0
    r0 = np.where(has, ranks[:, 0] if n_slots else 0.0, np.inf)
    recall = {str(k): np.count_nonzero(r0 < k) / n_q for k in ks}
    recall["1%"] = np.count_nonzero(r0 <= recall_1pct_index(n_gallery)) / n_q
    i = np.arange(n_slots, dtype=np.float64)
    valid = i < n_good[:, None]
    prec = (i + 1) / (ranks + 1)
    prev = np.where(ranks == 0, 1.0, i / np.maximum(ranks, 1))
    denom = np.maximum(n_good, 1)
    ap = (np.where(valid, (prev + prec) / 2, 0).sum(1) / denom)[has].sum() / n_q
    ap_ni = (np.where(valid, prec, 0).sum(1) / denom)[has].sum() / n_q
    return {"n_queries": int(n_q), "n_gallery": int(n_gallery),
            "n_queries_without_match": int(n_q - has.sum()),
            "recall": {k: float(v) for k, v in recall.items()},
            "ap": float(ap), "ap_noninterp": float(ap_ni)}


# ----------------------------------------------------------------------------- internals

def _check_inputs(query_emb, gallery_emb, ks, topk, vectors=(1, 1)):
    """Queries as one numpy array in the compute dtype (float64 if either side is, else
    float32); clear ValueErrors for what the official script would silently get wrong."""
    g_shape = tuple(getattr(gallery_emb, "shape", ()))
    q = to_numpy(query_emb)  # checked here, moved to the device later
    if q.ndim != 2 or len(g_shape) != 2:
        raise ValueError(f"embeddings must be 2-D (n, dim); got queries {tuple(q.shape)}, gallery {g_shape}")
    if q.shape[1] * vectors[1] != g_shape[1] * vectors[0] or vectors[0] > 1 < vectors[1]:
        raise ValueError(f"dimension mismatch: queries have dim {q.shape[1]} ({vectors[0]} vectors), "
                         f"gallery dim {g_shape[1]} ({vectors[1]} vectors)")
    if g_shape[0] == 0:
        raise ValueError("empty gallery: nothing to rank against")
    if q.shape[0] == 0:
        raise ValueError("no queries to score")
    _check_ks(ks, topk)
    g_dtype = getattr(gallery_emb, "dtype", None)
    wide = q.dtype == np.float64 or str(g_dtype) in ("float64", "torch.float64")
    dtype = np.float64 if wide else np.float32
    return np.ascontiguousarray(q, dtype=dtype), g_shape[0], dtype


def _check_ks(ks, topk) -> None:
    if any(not isinstance(k, (int, np.integer)) or k < 1 for k in ks) or topk < 0:
        raise ValueError(f"ks must be positive integers and topk >= 0; got ks={ks}, topk={topk}")


def _labels(labels, n, name):
    arr = to_numpy(labels)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"{name} labels: expected {n} labels (one per {name} embedding), got shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def good_counts(query_labels, gallery_labels) -> np.ndarray:
    """Number of good (same-label, non-junk) gallery items of each query."""
    return _good_table(np.asarray(query_labels, np.int64), np.asarray(gallery_labels, np.int64))[1]


def _good_table(ql, gl):
    """(n_queries x max_goods) gallery indices of each query's good items (padding arbitrary) and
    the number of goods per query; from one sort of the gallery labels, no per-query loop."""
    order = np.argsort(gl, kind="stable")
    uniq, start, count = np.unique(gl[order], return_index=True, return_counts=True)
    pos = np.clip(np.searchsorted(uniq, ql), 0, max(len(uniq) - 1, 0))
    found = (uniq[pos] == ql) & (ql != -1)
    n_good = np.where(found, count[pos], 0)
    slots = np.arange(int(n_good.max(initial=0)))
    valid = slots < n_good[:, None]
    return order[np.where(valid, start[pos][:, None] + slots, 0)], n_good


def _read_rows(gallery, key, dtype) -> np.ndarray:
    """Rows `key` (a slice or sorted int array) of any array-like, as a contiguous array."""
    return np.ascontiguousarray(np.asarray(gallery[key]), dtype=dtype)


def _sort_desc(ops, gs, valid):
    """Good scores in descending order, -inf padding last (its counts are ignored)."""
    gs[ops.index(~valid)] = -np.inf
    return ops.sort_desc(gs)


def _gather_goods(ops, s, gidx, n_good):
    """Good scores read off a similarity block that holds the whole gallery."""
    valid = np.arange(gidx.shape[1]) < n_good[:, None]
    return _sort_desc(ops, ops.gather(s, ops.index(gidx)), valid)


def _pair_scores(q, gallery, gidx, n_good, budget, vectors=(1, 1)) -> np.ndarray:
    """Good scores from the good rows alone, read in ascending row order (chunk-friendly), in
    blocks of ~budget/4 bytes (numpy's einsum: ~7x faster than torch for these row dots)."""
    valid = np.arange(gidx.shape[1]) < n_good[:, None]
    qi, si = np.nonzero(valid)
    gi = gidx[qi, si]
    order = np.argsort(gi, kind="stable")
    out = np.zeros(gidx.shape, dtype=q.dtype)
    block = max(1, budget // 4 // (q.shape[1] * q.itemsize))
    for a in range(0, len(order), block):
        sel = order[a:a + block]
        uniq, inv = np.unique(gi[sel], return_inverse=True)
        rows = _read_rows(gallery, uniq, q.dtype)
        out[qi[sel], si[sel]] = pair_dots(q[qi[sel]], rows[inv], *vectors)
    return _sort_desc(ops_for("cpu"), out, valid)


def _count_above(ops, s, gs, gidx, n_good, g0, g1, counts):
    """counts[q, i] += #{non-junk, non-good j in this block : s[q, j] > gs[q, i]}; s is consumed
    (goods set to -inf)."""
    valid = np.arange(gidx.shape[1]) < n_good[:, None]
    rows, cols = np.nonzero(valid & (gidx >= g0) & (gidx < g1))
    if len(rows):
        s[ops.index(rows), ops.index(gidx[rows, cols] - g0)] = -np.inf
    if gs.shape[1] <= COMPARE_SLOTS:  # the same counts as below, without sorting the rows
        for i in range(gs.shape[1]):
            counts[:, i] += ops.count_greater(s, gs[:, i:i + 1])
        return
    counts += ops.count_above_many(s, gs)


def _merge_topk(ops, best, q0, q1, s, g0, k):
    """Fold a block's top-k into the running top-k of queries q0:q1."""
    vals, idx = ops.topk(s, k)
    cat_v = ops.cat([best[0][q0:q1], vals])
    cat_i = ops.cat([best[1][q0:q1], idx + g0])
    vals, pick = ops.topk(cat_v, k)
    best[0][q0:q1] = vals
    best[1][q0:q1] = ops.gather(cat_i, pick)
