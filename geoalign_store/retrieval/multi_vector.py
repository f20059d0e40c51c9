"""Items of several vectors (issue 24): heads with the best-of-maps rule embed a drone image as K
unit vectors, and a (drone, satellite) pair scores as its best map's cosine, max over the K.

One convention everywhere: in memory, such an embedding is a 3-D array (n, K, d); streamed, a
2-D one (n, K * d) whose `vectors` attribute is K (`StoredEmbeddings`). The metrics and the
top-k take the max inside each similarity block (`block`), so every rank and AP is the one of
the max-over-maps score. How an index serves it: the gallery (satellites, map tiles) holds one
vector an item, unchanged; a query's K vectors are searched each and the results merged by item,
best score first (`merge_best`). For an exact (flat) index that merge is exact: if an item is
among the k best by its best map's score, that map's own search ranks it among its k best too.
"""
from __future__ import annotations

import numpy as np


def rows_and_vectors(emb) -> tuple[object, int]:
    """(2-D rows, vectors an item): a 3-D array is flattened to (n, K * d); a 2-D array-like
    keeps its rows and says its `vectors` (1 unless it carries the attribute)."""
    shape = tuple(getattr(emb, "shape", ()))
    if len(shape) == 3:
        return emb.reshape(shape[0], shape[1] * shape[2]), shape[1]
    return emb, int(getattr(emb, "vectors", 1))


def block(ops, q, g, q_vectors: int, g_vectors: int, out):
    """The similarity block q g^T into `out` (m x n), each pair scored as the best pair of the
    items' vectors: q (m, Kq * d), g (n, Kg * d)."""
    if q_vectors == g_vectors == 1:
        return ops.matmul(q, g, out=out)
    m, n = q.shape[0], g.shape[0]
    dim = q.shape[1] // q_vectors
    every = ops.matmul(q.reshape(m * q_vectors, dim), g.reshape(n * g_vectors, dim), out=None)
    return ops.amax(every.reshape(m, q_vectors, n, g_vectors), (1, 3), out=out)


def pair_dots(q, g, q_vectors: int, g_vectors: int) -> np.ndarray:
    """Row i of q against row i of g (numpy), the best pair of their vectors."""
    if q_vectors == g_vectors == 1:
        return np.einsum("ij,ij->i", q, g)
    p, dim = len(q), q.shape[1] // q_vectors
    every = np.einsum("iad,ibd->iab", q.reshape(p, q_vectors, dim), g.reshape(p, g_vectors, dim))
    return every.reshape(p, -1).max(1)


def merge_best(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of (scores, ids) (n x L, the searches of one query's K vectors side by side): the
    k best distinct ids by their best score, best first; -1 ids (nothing found) last, as FAISS
    pads (score -inf). -> (scores, ids), each n x k."""
    n, width = ids.shape
    score = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    row = np.repeat(np.arange(n), width)
    flat_ids, flat_scores = ids.ravel(), score.ravel()
    # each (row, id) once, at its best score: sorted by row, id, then score descending
    order = np.lexsort((-flat_scores, flat_ids, row))
    r, i = row[order], flat_ids[order]
    first = np.ones(len(order), bool)
    first[1:] = (r[1:] != r[:-1]) | (i[1:] != i[:-1])
    kept = np.where(first & (i >= 0), flat_scores[order], -np.inf).reshape(n, width)
    kept_ids = np.where(first & (i >= 0), i, -1).reshape(n, width)
    best = np.argsort(-kept, axis=1, kind="stable")[:, :k]
    out_s, out_i = np.take_along_axis(kept, best, 1), np.take_along_axis(kept_ids, best, 1)
    if out_s.shape[1] < k:   # fewer candidates than k: padded as FAISS pads
        pad = k - out_s.shape[1]
        out_s = np.pad(out_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        out_i = np.pad(out_i, ((0, 0), (0, pad)), constant_values=-1)
    return out_s, out_i


def search_best(search, queries, k: int):
    """`search(rows, k) -> (scores, ids)` (one vector a row) for queries of several vectors
    (3-D (n, K, d)): the K searched at once, merged by item (`merge_best`)."""
    q = np.asarray(queries)
    if q.ndim == 2:
        return search(q, k)
    n, vectors, dim = q.shape
    scores, ids = search(np.ascontiguousarray(q.reshape(n * vectors, dim)), k)
    return merge_best(scores.reshape(n, vectors * k), ids.reshape(n, vectors * k), k)
