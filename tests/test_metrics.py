"""The vectorised metrics against a direct transcription of University-1652's `evaluate_gpu.py`."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from geoalign_store.retrieval import (metrics_from_ranks, recall_1pct_index, retrieval_metrics,
                                      score_retrieval, topk_gallery)


# --------------------------------------------------------------------------- the reference
# A line-by-line transcription of the official loop (evaluate / compute_mAP), extended only by
# a second accumulator for the non-interpolated AP. CMC sums stay integers and are divided in
# float64 (the script's `.float()` is a print-time float32 cast, ~1e-8 off).

def _official_compute_map(index, good_index, junk_index):
    ap, ap_ni = 0.0, 0.0
    cmc = torch.IntTensor(len(index)).zero_()
    if good_index.size == 0:
        cmc[0] = -1
        return ap, ap_ni, cmc
    mask = np.isin(index, junk_index, invert=True)
    index = index[mask]
    ngood = len(good_index)
    mask = np.isin(index, good_index)
    rows_good = np.argwhere(mask == True).flatten()  # noqa: E712 (as in the script)
    cmc[rows_good[0]:] = 1
    for i in range(ngood):
        d_recall = 1.0 / ngood
        precision = (i + 1) * 1.0 / (rows_good[i] + 1)
        old_precision = i * 1.0 / rows_good[i] if rows_good[i] != 0 else 1.0
        ap = ap + d_recall * (old_precision + precision) / 2
        ap_ni = ap_ni + d_recall * precision
    return ap, ap_ni, cmc


def official_reference(qf, ql, gf, gl):
    cmc = torch.IntTensor(len(gl)).zero_()
    ap = ap_ni = 0.0
    for i in range(len(ql)):
        score = (gf @ qf[i]).numpy()
        index = np.argsort(score)[::-1]
        good_index = np.argwhere(gl == ql[i])
        junk_index = np.argwhere(gl == -1)
        ap_tmp, ap_ni_tmp, cmc_tmp = _official_compute_map(index, good_index, junk_index)
        if cmc_tmp[0] == -1:
            continue
        cmc = cmc + cmc_tmp
        ap += ap_tmp
        ap_ni += ap_ni_tmp
    n, last = len(ql), len(gl) - 1  # the script indexes CMC[9]: guard galleries under 10 items
    one = round(len(gl) * 0.01)
    return {"recall": {"1": int(cmc[0]) / n, "5": int(cmc[min(4, last)]) / n,
                       "10": int(cmc[min(9, last)]) / n, "1%": int(cmc[one]) / n},
            "ap": ap / n, "ap_noninterp": ap_ni / n}


# --------------------------------------------------------------------------- generated cases

class LazyGallery:
    """A non-array gallery (like a zarr array): forces the streamed, multi-chunk path."""

    def __init__(self, arr):
        self.arr, self.shape, self.dtype = arr, arr.shape, arr.dtype
        self.reads = 0

    def __getitem__(self, key):
        self.reads += 1
        return self.arr[key].copy()


def _normalise(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_case(seed, kind):
    """Locations with queries, gallery-only distractor locations, junk items, and queries whose
    location is absent from the gallery. D2S-like: one or two goods per location; S2D-like: many."""
    rng = np.random.default_rng(seed)
    dim = int(rng.integers(4, 24))
    n_loc = int(rng.integers(1, 12))
    per_g = rng.integers(1, 3, n_loc) if kind == "d2s" else rng.integers(3, 15, n_loc)
    per_q = rng.integers(2, 9, n_loc) if kind == "d2s" else np.ones(n_loc, int)
    n_distr = int(rng.integers(0, 8))
    distr_per_g = 1 if kind == "d2s" else int(rng.integers(1, 10))
    centres = rng.standard_normal((n_loc + n_distr + 3, dim))
    g_lab = np.concatenate([np.repeat(np.arange(n_loc), per_g),
                            np.repeat(np.arange(n_loc, n_loc + n_distr), distr_per_g)])
    n_junk = int(rng.integers(0, 6))
    g_lab = np.concatenate([g_lab, -np.ones(n_junk, int)])
    q_lab = np.repeat(np.arange(n_loc), per_q)
    n_nomatch = int(rng.integers(0, 3))  # labels n_loc+n_distr.. have no gallery item
    q_lab = np.concatenate([q_lab, n_loc + n_distr + rng.integers(0, 3, n_nomatch)])
    noise = rng.uniform(0.3, 2.0)
    g_cent = centres[np.where(g_lab >= 0, g_lab, len(centres) - 1)]
    gf = _normalise(g_cent + noise * rng.standard_normal((len(g_lab), dim)))
    qf = _normalise(centres[q_lab] + noise * rng.standard_normal((len(q_lab), dim)))
    perm_g, perm_q = rng.permutation(len(g_lab)), rng.permutation(len(q_lab))
    return qf[perm_q], q_lab[perm_q], gf[perm_g], g_lab[perm_g], rng


def _assert_close(fast, ref):
    for key in ("1", "5", "10", "1%"):
        assert fast["recall"][key] == pytest.approx(ref["recall"][key], abs=1e-9), key
    assert fast["ap"] == pytest.approx(ref["ap"], abs=1e-9)
    assert fast["ap_noninterp"] == pytest.approx(ref["ap_noninterp"], abs=1e-9)


N_SEEDS = 150  # x 2 kinds x 3 chunkings = 900 comparisons against the reference


@pytest.mark.parametrize("kind", ["d2s", "s2d"])
def test_parity_with_official_script_on_generated_cases(kind):
    """300 generated cases (150 seeds x D2S-like/S2D-like), each scored three ways (auto chunks;
    tiny query chunks; streamed lazy gallery in small chunks) = 900 comparisons, all to 1e-9."""
    for seed in range(N_SEEDS):
        qf, ql, gf, gl, rng = make_case(seed, kind)
        ref = official_reference(torch.from_numpy(qf), ql, torch.from_numpy(gf), gl)
        runs = [retrieval_metrics(qf, gf, ql, gl),
                retrieval_metrics(qf, torch.from_numpy(gf), ql, gl, chunk_size=int(rng.integers(1, 8))),
                retrieval_metrics(torch.from_numpy(qf), LazyGallery(gf), ql, gl,
                                  chunk_size=int(rng.integers(1, 20)),
                                  gallery_chunk_size=int(rng.integers(1, 30)))]
        for fast in runs:
            _assert_close(fast, ref)
            assert fast["n_queries"] == len(ql) and fast["n_gallery"] == len(gl)
            has = np.isin(ql, gl[gl >= 0])
            assert fast["n_queries_without_match"] == int((~has).sum())


def test_float32_streamed_equals_in_memory():
    """The float32 path (production dtype), streamed vs one chunk, on a bigger case."""
    rng = np.random.default_rng(7)
    g = _normalise(rng.standard_normal((3000, 32))).astype(np.float32)
    gl = np.repeat(np.arange(300), 10)
    q = _normalise(g[::10][:200] + 0.5 * rng.standard_normal((200, 32))).astype(np.float32)
    ql = np.arange(200)
    a = retrieval_metrics(q, g, ql, gl)
    b = retrieval_metrics(q, LazyGallery(g), ql, gl, gallery_chunk_size=257, chunk_size=33)
    assert a == b
    _assert_close(a, official_reference(torch.from_numpy(q), ql, torch.from_numpy(g), gl))


@pytest.mark.parametrize("n_gallery, index", [(951, 10), (150, 2), (250, 2), (350, 4), (1, 0),
                                              (99, 1), (51355, 514), (200, 2)])
def test_recall_1pct_index_is_pythons_round(n_gallery, index):
    assert recall_1pct_index(n_gallery) == index


def _line_case(n_gallery, good_rank, junk=()):
    """Query (1, 0); gallery item j at angle 0.001 (j+1): item j is at rank j before junk removal."""
    ang = 0.001 * (np.arange(n_gallery) + 1)
    g = np.stack([np.cos(ang), np.sin(ang)], 1)
    gl = np.arange(n_gallery) + 1
    gl[good_rank] = 0
    gl[list(junk)] = -1
    return np.array([[1.0, 0.0]]), np.array([0]), g, gl


@pytest.mark.parametrize("n_gallery, good_rank, junk, hit", [
    (150, 2, (), 1.0), (150, 3, (), 0.0), (250, 2, (), 1.0), (250, 3, (), 0.0),
    (951, 10, (), 1.0), (951, 11, (), 0.0),
    # junk counts in the gallery size (index 2) but not in the rank: 3 - 1 junk above = rank 2
    (150, 3, (0,), 1.0), (150, 4, (0,), 0.0)])
def test_recall_1pct_boundary(n_gallery, good_rank, junk, hit):
    q, ql, g, gl = _line_case(n_gallery, good_rank, junk)
    m = retrieval_metrics(q, g, ql, gl)
    assert m["recall"]["1%"] == hit
    _assert_close(m, official_reference(torch.from_numpy(q), ql, torch.from_numpy(g), gl))


def test_metrics_from_ranks_by_hand():
    m = metrics_from_ranks(np.array([[0, 2, 5], [3, 0, 0]]), np.array([3, 1]), 100, ks=(1, 5))
    ap0 = ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2 + (2 / 5 + 3 / 6) / 2) / 3
    ap1 = (0 / 3 + 1 / 4) / 2  # r = 3 > 0: p_prev = i / r = 0
    assert m["ap"] == pytest.approx((ap0 + ap1) / 2, abs=1e-15)
    assert m["ap_noninterp"] == pytest.approx(((1 + 2 / 3 + 3 / 6) / 3 + 1 / 4) / 2, abs=1e-15)
    assert m["recall"] == {"1": 0.5, "5": 1.0, "1%": 0.5}


def test_queries_without_match_and_junk_labelled_query():
    q, ql, g, gl = _line_case(20, 0)
    q2 = np.concatenate([q, q, q]); ql2 = np.array([0, 999, -1])
    m = retrieval_metrics(q2, g, ql2, gl)
    assert m["n_queries_without_match"] == 2
    assert m["recall"]["1"] == pytest.approx(1 / 3) and m["ap"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("lazy", [False, True])
def test_topk_matches_argsort_without_junk(lazy):
    rng = np.random.default_rng(3)
    g = _normalise(rng.standard_normal((97, 8)))
    q = _normalise(rng.standard_normal((23, 8)))
    gl = rng.integers(-1, 5, 97)
    gal = LazyGallery(g) if lazy else g
    idx, sc = topk_gallery(q, gal, 7, gallery_labels=gl, chunk_size=5, gallery_chunk_size=13 if lazy else None)
    s = q @ g.T
    s[:, gl == -1] = -np.inf
    want = np.argsort(-s, axis=1)[:, :7]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(sc, np.take_along_axis(s, want, 1), atol=1e-12)
    # more than the non-junk items: padded with -1 / -inf
    idx, sc = topk_gallery(q[:2], g[:4], 6, gallery_labels=np.array([0, -1, 1, 2]))
    assert (idx[:, 3:] == -1).all() and np.isneginf(sc[:, 3:]).all() and (idx[:, :3] != 1).all()


def test_one_pass_gives_metrics_and_topk():
    qf, ql, gf, gl, _ = make_case(11, "s2d")
    lazy = LazyGallery(gf)
    res = score_retrieval(qf, lazy, ql, gl, topk=3, gallery_chunk_size=7)
    assert res.metrics == retrieval_metrics(qf, gf, ql, gl)
    n_chunks = -(-len(gl) // 7)
    assert lazy.reads <= n_chunks + len(gl)  # each chunk once + the good-row reads
    np.testing.assert_array_equal(res.topk_indices, topk_gallery(qf, gf, 3, gallery_labels=gl)[0])


@pytest.mark.parametrize("args, match", [
    (dict(g=np.zeros((0, 4))), "empty gallery"),
    (dict(g=np.ones((5, 3))), "dimension mismatch"),
    (dict(gl=np.zeros(4, int)), "gallery labels"),
    (dict(ql=np.zeros(3, int)), "query labels"),
    (dict(q=np.ones(4)), "2-D"),
    (dict(q=np.zeros((0, 4))), "no queries"),
    (dict(ks=(0,)), "positive"),
])
def test_bad_inputs_raise_clear_errors(args, match):
    base = dict(q=np.ones((2, 4)), g=np.ones((5, 4)), ql=np.zeros(2, int), gl=np.zeros(5, int), ks=(1,))
    base.update(args)
    if "g" in args and len(base["g"]) != 5:
        base["gl"] = np.zeros(len(base["g"]), int)
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(base["q"], base["g"], base["ql"], base["gl"], ks=base["ks"])
