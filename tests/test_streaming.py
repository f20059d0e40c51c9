"""Bounded store reads, fused raw embeddings, query streaming and device= of score/index."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from conftest import write_plain_store
from geoalign_store.config import compose
from geoalign_store.retrieval import (metrics as mx, Side, StoredEmbeddings, raw_embedding,
                                      score_retrieval, score_streamed_queries)
from geoalign_store.store import prefetched_slabs, read_rows, rows_per_request
from pipelines import index, score
from pipelines.cli import app
from test_metrics import _assert_close, make_case, official_reference


class Recording:
    """An array-like that records every row request made to it."""

    def __init__(self, data, chunk_rows):
        self.data, self.shape, self.dtype = data, data.shape, data.dtype
        self.chunks = (chunk_rows, data.shape[1]) if chunk_rows else None
        self.requests = []

    def __getitem__(self, key):
        start, stop, _ = key.indices(self.shape[0])
        self.requests.append((start, stop))
        return self.data[key]


@pytest.mark.parametrize("chunk_rows", [0, 1, 7, 50])
def test_read_rows_never_requests_more_than_its_bound(chunk_rows):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((1000, 6)).astype(np.float32)
    array = Recording(data, chunk_rows)
    max_bytes = 120 * 6 * 4  # 120 rows: 2 chunks of 50, 17 of 7, ...
    bound = rows_per_request(array, max_bytes)
    assert bound == (max(chunk_rows, 120 // chunk_rows * chunk_rows) if chunk_rows else 120)
    for rows in (np.arange(1000), np.sort(rng.choice(1000, 300, replace=False)),
                 np.array([3, 3, 4, 999]), np.arange(0)):
        array.requests.clear()
        np.testing.assert_array_equal(read_rows(array, rows, max_bytes=max_bytes), data[rows])
        unit = chunk_rows or 1
        for start, stop in array.requests:
            assert stop - start <= bound
            assert (stop - 1) // unit * unit < start // unit * unit + bound  # one aligned window
    out = np.zeros((1000, 10), np.float32)
    read_rows(array, np.arange(1000), out=out[:, 2:8], max_bytes=max_bytes)  # into columns
    np.testing.assert_array_equal(out[:, 2:8], data)
    with pytest.raises(ValueError, match="ascending"):
        read_rows(array, np.array([5, 1]))


def test_stored_embeddings_read_straight_into_place_equal_raw_embedding(tmp_path):
    store = write_plain_store(tmp_path / "s.zarr", dim=24)
    root = zarr.open_group(str(store), mode="r")
    group = root["features/mine/test/drone"]
    rows = np.array([0, 2, 3, 4, 9, 50, 51, 119])
    emb = StoredEmbeddings(root, "mine", "test", Side("drone", rows, None, None), [28, 26])
    want = raw_embedding({k: group[f"layer_{k}/desc"][:][rows] for k in (26, 28)}, "drone")
    assert np.array_equal(emb[:], want)  # bitwise: same norms, same divisions
    assert np.array_equal(emb.materialise(chunk=3), want)
    assert np.array_equal(emb[np.array([5, 0, 7])], want[[5, 0, 7]])  # any order


def test_prefetched_slabs_in_order_errors_raised_and_early_exit_stops_reader():
    def fill(a, b, out):
        out[:] = np.arange(a, b)[:, None]
    got = [(a, b, out[:, 0].copy()) for a, b, out in prefetched_slabs(10, 3, fill, lambda: np.empty((3, 1)))]
    assert [(a, b) for a, b, _ in got] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert all((v == np.arange(a, b)).all() for a, b, v in got)

    def broken(a, b, out):
        raise OSError("disk gone")
    with pytest.raises(OSError, match="disk gone"):
        list(prefetched_slabs(10, 3, broken, lambda: np.empty((3, 1))))
    before = threading.active_count()
    for _ in prefetched_slabs(1000, 1, fill, lambda: np.empty((1, 1))):
        break
    assert threading.active_count() <= before


class LazyQueries:
    def __init__(self, q, chunk_rows=None):
        self.q, self.shape = q, q.shape
        self.chunks = (chunk_rows, q.shape[1]) if chunk_rows else None

    def read_into(self, key, out):
        out[:] = self.q[key]
        return out


@pytest.mark.parametrize("kind", ["d2s", "s2d"])
def test_streamed_queries_match_the_official_reference(kind):
    """Slabs of a few queries, rank counting by comparison (<= 4 goods) or by sorting (more)."""
    for seed in range(30):
        qf, ql, gf, gl, rng = make_case(seed, kind)
        ref = official_reference(torch.from_numpy(qf), ql, torch.from_numpy(gf), gl)
        slab = int(rng.integers(1, 6)) * qf.shape[1] * 8
        res = score_streamed_queries(LazyQueries(qf, int(rng.integers(1, 4))), gf, ql, gl, topk=4,
                                     slab_bytes=slab)
        _assert_close(res.metrics, ref)
        base = score_retrieval(qf, gf, ql, gl, topk=4)
        assert res.metrics == base.metrics
        np.testing.assert_array_equal(res.topk_indices, base.topk_indices)


def test_counting_by_comparison_equals_counting_by_sort(monkeypatch):
    qf, ql, gf, gl, _ = make_case(3, "s2d")
    q32, g32 = qf.astype(np.float32), gf.astype(np.float32)
    fast = score_retrieval(q32, g32, ql, gl).metrics
    monkeypatch.setattr(mx, "COMPARE_SLOTS", 10_000)
    assert score_retrieval(q32, g32, ql, gl).metrics == fast
    monkeypatch.setattr(mx, "COMPARE_SLOTS", -1)
    assert score_retrieval(q32, g32, ql, gl).metrics == fast


def test_score_device_cpu_equals_default(tmp_path):
    store = write_plain_store(tmp_path / "d.zarr")
    for mode in ("D2S", "S2D"):
        cfg = [f"store={store}", "pictures=0", f"mode={mode}"]
        base = score.run(compose("score", cfg))
        cpu = score.run(compose("score", [*cfg, "device=cpu"]))
        assert {k: v for k, v in cpu.items() if k != "_outputs"} == \
            {k: v for k, v in base.items() if k != "_outputs"}
    built = index.run(compose("index", [f"store={store}", "index=flat", "device=cpu"]))
    assert built["indices"][0]["n"] == 35


@pytest.mark.parametrize("stage", ["score", "index"])
@pytest.mark.parametrize("device, says", [("gpu", "is not one of"), ("cuda:7", "not available")])
def test_bad_device_is_a_clear_user_error(tmp_path, stage, device, says):
    store = write_plain_store(tmp_path / "b.zarr")
    out = CliRunner().invoke(app, [stage, f"store={store}", f"device={device}"])
    assert out.exit_code == 2, out.output
    assert f"device={device}" in out.output.replace("'", "") and says in out.output
    assert "Traceback" not in out.output
