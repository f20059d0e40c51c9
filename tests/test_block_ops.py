"""The scorers' two array backends (numpy on the CPU, torch for a GPU) give the official metrics
and the same top-k, and a CPU scoring process never loads torch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_plain_store
from geoalign_store.retrieval import (NumpyOps, TorchOps, raw_embedding, score_retrieval,
                                      score_streamed_queries)
from test_metrics import LazyGallery, _assert_close, make_case, official_reference
from test_streaming import LazyQueries

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", ["d2s", "s2d"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numpy_and_torch_backends_agree_with_the_official_loop(kind, dtype):
    """The torch backend is the GPU code path, run here on the CPU: same metrics, same top-k,
    in memory, streamed over the gallery, and streamed over the queries."""
    for seed in range(40):
        qf, ql, gf, gl, rng = make_case(seed, kind)
        qf, gf = qf.astype(dtype), gf.astype(dtype)
        ref = official_reference(torch.from_numpy(qf), ql, torch.from_numpy(gf), gl)
        chunks = dict(chunk_size=int(rng.integers(1, 9)), gallery_chunk_size=int(rng.integers(1, 30)))
        runs = {}
        for backend in ("numpy", "torch"):
            runs[backend] = [
                score_retrieval(qf, gf, ql, gl, topk=5, backend=backend),
                score_retrieval(qf, LazyGallery(gf), ql, gl, topk=5, backend=backend, **chunks),
                score_streamed_queries(LazyQueries(qf, 2), gf, ql, gl, topk=5, backend=backend,
                                       slab_bytes=3 * qf.shape[1] * 8)]
        for res in runs["numpy"] + runs["torch"]:
            _assert_close(res.metrics, ref)
        for a, b in zip(runs["numpy"], runs["torch"]):
            assert a.metrics == b.metrics
            np.testing.assert_array_equal(a.topk_indices, b.topk_indices)


def test_counting_above_many_goods_handles_ties_signed_zeros_and_infinities():
    rng = np.random.default_rng(5)
    s = np.round(rng.standard_normal((64, 300)), 1).astype(np.float32)  # many ties
    s[:, :7] = [-0.0, 0.0, np.inf, -np.inf, -np.inf, 1e-40, -1e-40]
    goods = np.sort(rng.choice(s.ravel(), (64, 9)), axis=1)[:, ::-1].copy()
    goods[:, 0], goods[:, 1], goods[:, 2] = 0.0, -0.0, -np.inf
    goods[5:9, 3:] = -np.inf  # padding of queries with fewer goods: their counts are ignored
    want = np.stack([(s > goods[:, i:i + 1]).sum(1) for i in range(goods.shape[1])], 1)
    real = ~np.isneginf(goods)
    np.testing.assert_array_equal(NumpyOps().count_above_many(s.copy(), goods)[real], want[real])
    got = TorchOps("cpu").count_above_many(torch.from_numpy(s.copy()), torch.from_numpy(goods))
    np.testing.assert_array_equal(got.numpy()[real], want[real])
    assert real[:, 3:].any() and not real[5:9, 3:].any()


def test_numpy_topk_is_best_first_and_handles_k_beyond_the_row():
    s = np.array([[0.1, 0.9, 0.5, 0.7], [3.0, 1.0, 2.0, 0.0]], np.float32)
    vals, cols = NumpyOps().topk(s, 2)
    np.testing.assert_array_equal(cols, [[1, 3], [0, 2]])
    np.testing.assert_array_equal(vals, np.float32([[0.9, 0.7], [3.0, 2.0]]))
    vals, cols = NumpyOps().topk(s, 9)
    np.testing.assert_array_equal(cols, np.argsort(-s, axis=1))


def test_raw_embedding_is_the_normalised_concatenation_of_normalised_layers():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((50, 12)).astype(np.float32), 40 * rng.standard_normal((50, 20)).astype(np.float32)
    a[3] = 0.0  # a zero layer stays zero (norms clamped at 1e-12, as F.normalize)
    got = raw_embedding({26: a, 28: b}, "drone")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
    want = unit(np.concatenate([unit(a64), unit(b64)], 1))
    np.testing.assert_allclose(got, want, atol=2e-7)
    assert (got[3, :12] == 0).all() and np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_scoring_on_the_cpu_never_imports_torch(tmp_path):
    """heads=none on the CPU: torch's ~1.4 s import is a third of a University-1652 score."""
    store = write_plain_store(tmp_path / "s.zarr")
    code = ("import sys, json\nfrom pipelines import score\nfrom geoalign_store.config import compose\n"
            f"out = score.run(compose('score', ['store={store}', 'pictures=0', 'heads=none', 'device=cpu']))\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'r1': out['recall']['1']}))")
    got = json.loads(_python(code))
    assert got["torch"] is False and 0 < got["r1"] <= 1



def test_row_pieces_bound_the_temporaries_without_changing_results(monkeypatch):
    """A 256 MB block's argpartition positions would be 512 MB: numpy works in row pieces."""
    from geoalign_store.retrieval import block_ops
    qf, ql, gf, gl, _ = make_case(4, "s2d")
    qf, gf = qf.astype(np.float32), gf.astype(np.float32)
    whole = score_retrieval(qf, gf, ql, gl, topk=6)
    monkeypatch.setattr(block_ops, "TEMP_BYTES", 40)  # a row or two per piece
    assert len(block_ops._row_pieces((len(qf), len(gf)), 8)) == len(qf)
    pieces = score_retrieval(qf, gf, ql, gl, topk=6)
    assert pieces.metrics == whole.metrics
    np.testing.assert_array_equal(pieces.topk_indices, whole.topk_indices)
    np.testing.assert_array_equal(pieces.topk_scores, whole.topk_scores)
