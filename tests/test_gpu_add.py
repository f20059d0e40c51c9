"""index=ivfpq's shards added on a GPU (issue 23, faiss-gpu), checked on faiss-cpu: faiss's GPU
entry points are faked (the "GPU index" is a CPU clone of what would be sent to the GPU), so
what is checked is the plumbing: with a GPU the add goes to the GPU and back, the shard written
is one the merge takes; without one nothing GPU is called; what the GPU cannot take falls back
to the CPU with its reason. Real GPU figures: benchmarks/gpu.py (part 5b, `--parts faiss_add`)."""
from __future__ import annotations

import types

import faiss
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from geoalign_store.config import compose
from geoalign_store.retrieval import choose_ivfpq, load_merged, plan_shards, save_index, search
from geoalign_store.retrieval import gpu_add
from geoalign_store.retrieval import index as fx
from geoalign_store.retrieval import sharded as sh
from geoalign_store.retrieval import sharded_build
from pipelines.cli import app
from test_sharded_index import FOLDER, _big_store, _index_cfg, _unit, inverted_lists


class FakeGpu:
    """faiss-gpu's functions on faiss-cpu: each call recorded as (name, what it was given)."""

    def __init__(self, monkeypatch, fail_add: bool = False):
        self.calls, self.fail_add = [], fail_add
        monkeypatch.setattr(fx, "_GPU_RESOURCES", {})
        monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
        monkeypatch.setattr(faiss, "StandardGpuResources", lambda: self._record("resources", None), raising=False)
        monkeypatch.setattr(faiss, "GpuClonerOptions", types.SimpleNamespace, raising=False)
        monkeypatch.setattr(faiss, "index_cpu_to_gpu", self.to_gpu, raising=False)
        monkeypatch.setattr(faiss, "index_gpu_to_cpu", self.to_cpu, raising=False)

    def _record(self, name, what):
        self.calls.append((name, what))
        return object()

    def to_gpu(self, resources, device, given, options=None):
        index = faiss.downcast_index(given)   # (a view: `given` owns it)
        quantizer = faiss.downcast_index(index.quantizer) if hasattr(index, "quantizer") else None
        self.calls.append(("to_gpu", {"device": device, "index": type(index).__name__,
                                      "quantizer": type(quantizer).__name__ if quantizer else None,
                                      "centroids": quantizer.reconstruct_n(0, quantizer.ntotal) if quantizer else None,
                                      "float16": getattr(options, "useFloat16", None)}))
        clone = faiss.clone_index(index)
        if self.fail_add and hasattr(clone, "invlists"):
            return types.SimpleNamespace(add_with_ids=self._out_of_memory)
        return clone

    def to_cpu(self, index):
        self.calls.append(("to_cpu", type(index).__name__))
        return faiss.clone_index(index)

    @staticmethod
    def _out_of_memory(x, ids):
        raise RuntimeError("Error in ... : cudaMalloc error out of memory [2]")

    def named(self, name):
        return [what for called, what in self.calls if called == name]


def _gallery(n=4000, d=48, seed=0):
    rng = np.random.default_rng(seed)
    return _unit(np.repeat(rng.standard_normal((n // 10, d)), 10, 0) + 0.3 * rng.standard_normal((n, d)))


def _trained(folder, x, p):
    folder.mkdir(parents=True, exist_ok=True)
    save_index(sh.train(x, p, seed=0), folder / "trained.faiss")
    np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float32, shape=x.shape).flush()
    return plan_shards(len(x), 1500)


def _added(folder, x, plan, gpu):
    marks = [sh.add_shard(folder, a, b, x, gpu) for a, b in plan]
    sh.merge(folder, plan)
    return marks


def test_with_a_gpu_the_add_goes_to_it_and_back_and_the_shard_is_the_cpu_one(tmp_path, monkeypatch):
    """Flat quantizer: the fake GPU adds with faiss's CPU code, so a shard that went through
    the clone-to-GPU / back / lists-moved path must be bitwise the CPU path's shard."""
    x = _gallery()
    p = choose_ivfpq(len(x), 48, {"nlist": 32, "d_out": 32})
    plan = _trained(tmp_path / "cpu", x, p)
    _added(tmp_path / "cpu", x, plan, None)
    fake = FakeGpu(monkeypatch)
    _trained(tmp_path / "gpu", x, p)
    fake.calls.clear()   # (training made none: train() was given no GPU)
    marks = _added(tmp_path / "gpu", x, plan, 0)
    assert [m["added_on"] for m in marks] == ["cuda:0"] * len(plan) and not any("gpu_fallback" in m for m in marks)
    sent = fake.named("to_gpu")
    assert len(sent) == len(fake.named("to_cpu")) == len(plan)
    assert all(s["device"] == 0 and s["index"] == "IndexIVFPQ" and s["quantizer"] == "IndexFlatL2" for s in sent)
    assert all(s["float16"] is True for s in sent)
    for a, b in plan:
        assert sh.shard_path(tmp_path / "gpu", a, b).read_bytes() == sh.shard_path(tmp_path / "cpu", a, b).read_bytes()
    merged, cpu = load_merged(tmp_path / "gpu", p["nprobe"]), load_merged(tmp_path / "cpu", p["nprobe"])
    assert inverted_lists(merged.index) == inverted_lists(cpu.index)
    np.testing.assert_array_equal(search(merged, x[:50], 5)[1], search(cpu, x[:50], 5)[1])


def test_an_hnsw_quantizer_goes_to_the_gpu_as_its_flat_centroids(tmp_path, monkeypatch):
    """The GPU has no HNSW: the clone gets a flat quantizer of the same centroids (each row in
    the list of its exact nearest centroid); the shard keeps the HNSW, and the merge takes it."""
    x = _gallery()
    p = choose_ivfpq(len(x), 48, {"nlist": 64, "quantizer": "hnsw", "reduce": "none"})
    plan = _trained(tmp_path, x, p)
    trained = faiss.read_index(str(tmp_path / "trained.faiss"))
    hnsw = faiss.downcast_index(faiss.extract_index_ivf(trained).quantizer)
    assert isinstance(hnsw, faiss.IndexHNSW)
    centroids = hnsw.reconstruct_n(0, hnsw.ntotal)
    fake = FakeGpu(monkeypatch)
    _added(tmp_path, x, plan, 0)
    assert [s["quantizer"] for s in fake.named("to_gpu")] == ["IndexFlatL2"] * len(plan)
    assert all(np.array_equal(s["centroids"], centroids) for s in fake.named("to_gpu"))
    shard = faiss.read_index(str(sh.shard_path(tmp_path, *plan[0])))
    assert isinstance(faiss.downcast_index(faiss.extract_index_ivf(shard).quantizer), faiss.IndexHNSW)
    merged = load_merged(tmp_path, p["nprobe"])
    assert merged.ntotal == len(x)
    lists = inverted_lists(merged.index)
    held = np.concatenate([np.frombuffer(ids, np.int64) for ids, _ in lists])
    np.testing.assert_array_equal(np.sort(held), np.arange(len(x)))
    nearest = faiss.knn(x, centroids, 1)[1][:, 0]          # where the flat GPU quantizer puts each row
    for number, (ids, _) in enumerate(lists):
        assert np.all(nearest[np.frombuffer(ids, np.int64)] == number)


def test_without_a_gpu_nothing_gpu_is_called(tmp_path, monkeypatch):
    """device=cpu with a GPU faiss could use, and device=cuda where faiss sees no GPU (torch
    does): no GPU function is called, and the shards are added on the CPU."""
    from pipelines import index
    fake = FakeGpu(monkeypatch)
    store = _big_store(tmp_path / "s.zarr")
    result = index.run(_index_cfg(store, "shard_rows=4000", "device=cpu"))["indices"][0]
    assert fake.calls == [] and result["add_devices"] == {"cpu": 3} and "gpu_fallback" not in result
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    result = index.run(_index_cfg(store, "shard_rows=4000", "device=cuda", "overwrite=true",
                                  "index_params={nprobe: 8, nlist: 128}"))["indices"][0]
    assert fake.calls == [] and result["built"] and result["add_devices"] == {"cpu": 3}


def test_the_stage_on_a_gpu_trains_and_adds_there(tmp_path, monkeypatch):
    """device=cuda (torch's and faiss's GPU faked): the k-means and every shard's add go to
    cuda:0; the index searches as the CPU build's does."""
    from pipelines import index
    here, there = _big_store(tmp_path / "cpu.zarr"), _big_store(tmp_path / "gpu.zarr")
    index.run(_index_cfg(here, "shard_rows=4000", "device=cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    fake = FakeGpu(monkeypatch)
    said = CliRunner().invoke(app, ["index", f"store={there}", "index=ivfpq", "shard_rows=4000", "device=cuda"])
    assert said.exit_code == 0 and "shards added: 3 on cuda:0" in said.output, said.output
    assert [s["index"] for s in fake.named("to_gpu")] == ["IndexFlatL2"] + ["IndexIVFPQ"] * 3   # k-means, shards
    assert len(fake.named("resources")) == 1   # one StandardGpuResources for the k-means and every add
    a, b = load_merged(here / FOLDER, 16), load_merged(there / FOLDER, 16)
    assert inverted_lists(a.index) == inverted_lists(b.index)


def test_one_gpu_resources_a_gpu_for_search_training_and_adds(tmp_path, monkeypatch):
    """index.py owns faiss's GPU resources: the two-level k-means (each of its k-means), the
    shards' adds and a search's index on GPU g all use the one StandardGpuResources of g; a
    second GPU gets one of its own. The two-level centroids are those the CPU's k-means gives
    (the fake GPU searches with faiss's CPU code)."""
    from geoalign_store.retrieval import two_level_centroids
    x = _gallery()
    p = choose_ivfpq(len(x), 48, {"nlist": 64, "kmeans": "two_level", "d_out": 32})
    cpu_centroids = two_level_centroids(x, 64, 10, 0)
    fake = FakeGpu(monkeypatch)
    np.testing.assert_array_equal(two_level_centroids(x, 64, 10, 0, gpu=0), cpu_centroids)
    flat = len(fake.named("to_gpu"))
    assert flat == 1 + 8 and all(s["index"] == "IndexFlatL2" for s in fake.named("to_gpu"))   # coarse + 8 fine
    plan = _trained(tmp_path, x, p)
    [sh.add_shard(tmp_path, a, b, x, 0) for a, b in plan]
    fx.to_device(faiss.IndexFlatIP(48), use_gpu=True, gpu_id=0)
    sh.add_shard(tmp_path, *plan[0], x, 1)
    assert [s["device"] for s in fake.named("to_gpu")[flat:]] == [0] * len(plan) + [0, 1]
    assert len(fake.named("resources")) == 2 and sorted(fx._GPU_RESOURCES) == [0, 1]


@pytest.mark.parametrize("why, given, fail_add", [
    ("its PQ codes have 6 bits; faiss's GPU IVF-PQ takes 8", {"nlist": 16, "nbits": 6, "m": 8, "d_out": 48}, False),
    ("its PQ has 6 sub-quantizers", {"nlist": 16, "m": 6, "d_out": 48}, False),
    ("faiss-gpu failed (Error in ... : cudaMalloc error out of memory [2])", {"nlist": 16, "d_out": 32}, True)])
def test_what_the_gpu_cannot_take_is_added_on_the_cpu_with_its_reason(tmp_path, monkeypatch, why, given, fail_add):
    x = _gallery(3000)
    p = choose_ivfpq(len(x), 48, given)
    plan = _trained(tmp_path / "cpu", x, p)
    _added(tmp_path / "cpu", x, plan, None)
    fake = FakeGpu(monkeypatch, fail_add)
    _trained(tmp_path / "gpu", x, p)
    marks = _added(tmp_path / "gpu", x, plan, 0)
    assert all(m["added_on"] == "cpu" and why in m["gpu_fallback"] for m in marks), marks
    assert len(fake.named("to_gpu")) == (len(plan) if fail_add else 0)   # refused before any GPU call
    for a, b in plan:
        assert sh.shard_path(tmp_path / "gpu", a, b).read_bytes() == sh.shard_path(tmp_path / "cpu", a, b).read_bytes()
    assert sharded_build._add_devices(marks) == {"add_devices": {"cpu": len(plan)}, "gpu_fallback": marks[0]["gpu_fallback"]}


def test_each_local_worker_adds_on_its_own_gpu(monkeypatch):
    """cluster=local:N: the workers are told one GPU each by extract's DevicePerWorker (when
    faiss can use GPUs), and a shard task adds on its worker's GPU."""
    from geoalign_store.features import worker_devices
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = compose("index", ["store=x.zarr", "index=ivfpq", "cluster=local:2", "device=cuda"])
    assert sharded_build._worker_devices(cfg) is None            # faiss-cpu: no GPU to give
    FakeGpu(monkeypatch)
    assert sharded_build._worker_devices(cfg) == ["cuda:0", "cuda:1"]
    told = []
    monkeypatch.setattr(sh, "add_shard", lambda folder, a, b, gallery, gpu: told.append(gpu) or {})
    monkeypatch.setitem(worker_devices._WORKER_DEVICE, "device", "cuda:1")
    source = {"folder": "f", "embeddings": "e", "device": "cuda:0"}
    monkeypatch.setitem(sharded_build._WORKER_GALLERIES, ("f", "e"), object())
    sharded_build.shard_task(source, 0, 10)
    monkeypatch.delitem(worker_devices._WORKER_DEVICE, "device")
    sharded_build.shard_task(source, 0, 10)                        # no plugin (a real cluster): the driver's
    assert told == [1, 0]
