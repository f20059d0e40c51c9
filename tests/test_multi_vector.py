"""Items of several vectors (the best-of-maps heads, issue 24): every scorer ranks a pair by its
best pair of vectors, checked against the official loop run on the max-over-maps scores, and an
index's merged searches against the exact top-k."""
from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as hs

from test_metrics import _official_compute_map
from geoalign_store.retrieval import score_retrieval, score_streamed_queries, search, topk_gallery
from geoalign_store.retrieval.multi_vector import merge_best


def unit(rng, *shape):
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def best_scores(q, g):
    """The slow, obvious rule: for every pair, the largest cosine of any of their vectors."""
    q = q if q.ndim == 3 else q[:, None, :]
    g = g if g.ndim == 3 else g[:, None, :]
    out = np.full((len(q), len(g)), -np.inf)
    for i in range(len(q)):
        for j in range(len(g)):
            out[i, j] = max(float(a @ b) for a in q[i] for b in g[j])
    return out


def official_on_scores(scores, ql, gl):
    """University-1652's loop (test_metrics' transcription) on a given score matrix."""
    cmc = torch.IntTensor(len(gl)).zero_()
    ap = 0.0
    for i in range(len(ql)):
        index = np.argsort(scores[i])[::-1]
        ap_i, _, cmc_i = _official_compute_map(index, np.argwhere(gl == ql[i]), np.argwhere(gl == -1))
        if cmc_i[0] == -1:
            continue
        cmc, ap = cmc + cmc_i, ap + ap_i
    return {"1": int(cmc[0]) / len(ql), "5": int(cmc[4]) / len(ql)}, ap / len(ql)


def case(seed, n_q=23, n_g=17, vectors=3, dim=8):
    rng = np.random.default_rng(seed)
    gl = rng.integers(0, 6, n_g)
    gl[rng.random(n_g) < 0.15] = -1       # junk items
    return unit(rng, n_q, vectors, dim), unit(rng, n_g, dim), rng.integers(0, 6, n_q), gl


@settings(max_examples=12, deadline=None)
@given(seed=hs.integers(0, 10_000), vectors=hs.integers(2, 4), backend=hs.sampled_from([None, "torch"]),
       gallery_chunk=hs.sampled_from([None, 5]))
def test_queries_of_several_vectors_rank_by_their_best_as_the_official_loop(seed, vectors, backend, gallery_chunk):
    q, g, ql, gl = case(seed, vectors=vectors)
    recall, ap = official_on_scores(best_scores(q, g), ql, gl)
    res = score_retrieval(q, g, ql, gl, topk=4, backend=backend, gallery_chunk_size=gallery_chunk, chunk_size=7)
    assert res.metrics["recall"]["1"] == recall["1"] and res.metrics["recall"]["5"] == recall["5"]
    assert res.metrics["ap"] == pytest.approx(ap, abs=1e-9)
    ref = np.where(gl == -1, -np.inf, best_scores(q, g))
    np.testing.assert_allclose(res.topk_scores, -np.sort(-ref, axis=1)[:, :4], atol=1e-5)


def test_a_gallery_of_several_vectors_ranks_by_their_best(tmp_path):
    q, g, ql, gl = case(3)
    sat_q, drone_g = g[gl >= 0], q        # S2D: satellites query a gallery of multi-vector drones
    recall, ap = official_on_scores(best_scores(sat_q, drone_g), gl[gl >= 0], ql)
    for chunk in (None, 4):
        res = score_retrieval(sat_q, drone_g, gl[gl >= 0], ql, gallery_chunk_size=chunk)
        assert res.metrics["recall"]["1"] == recall["1"] and res.metrics["ap"] == pytest.approx(ap, abs=1e-9)


class LazyRows:
    """Streamed queries as StoredEmbeddings gives them: rows of K * d, `vectors` = K."""

    def __init__(self, x):
        self.x, self.vectors = x.reshape(len(x), -1), x.shape[1]
        self.shape = self.x.shape

    def read_into(self, key, out):
        out[: len(self.x[key])] = self.x[key]
        return out


def test_streamed_queries_of_several_vectors_match_the_held_scorer():
    q, g, ql, gl = case(11, n_q=40)
    held = score_retrieval(q, g, ql, gl, topk=3)
    streamed = score_streamed_queries(LazyRows(q), g, ql, gl, topk=3, slab_bytes=300)
    assert streamed.metrics == held.metrics
    np.testing.assert_array_equal(streamed.topk_indices, held.topk_indices)


def test_an_index_serves_the_best_of_score_by_merging_each_vectors_search():
    q, g, _, _ = case(5, n_q=30, n_g=50, vectors=4, dim=16)
    index = faiss.IndexFlatIP(16)
    index.add(g)
    scores, ids = search(index, q, 6)
    want_ids, want_scores = topk_gallery(q, g, 6)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_merge_keeps_each_item_once_at_its_best_and_pads_as_faiss():
    scores = np.array([[0.9, 0.5, 0.8, 0.7], [0.3, 0.2, -1.0, 0.1]], np.float32)
    ids = np.array([[4, 2, 4, 7], [1, 1, -1, 1]])
    s, i = merge_best(scores, ids, 3)
    assert i.tolist() == [[4, 7, 2], [1, -1, -1]]
    assert s[0].tolist() == pytest.approx([0.9, 0.7, 0.5]) and s[1, 0] == pytest.approx(0.3)
    assert np.isneginf(s[1, 1:]).all()


def test_mismatched_vector_widths_are_refused():
    q, g, ql, gl = case(1, dim=8)
    with pytest.raises(ValueError, match="dimension mismatch"):
        score_retrieval(q, g[:, :6], ql, gl)
