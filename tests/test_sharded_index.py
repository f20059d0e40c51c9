"""index=ivfpq at any size (issue 23): the parameter rule, the sharded build against one index
adding every row (same codes, same results), exact re-ranking against exact search, resuming,
refusals (exit 2), and a dask worker killed mid-build."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from conftest import write_plain_store
from geoalign_store.config import ConfigError, compose
from geoalign_store.retrieval import (build_params, choose_ivfpq, factory_string, load_merged, plan_shards,
                                      save_index, search)
from geoalign_store.retrieval import sharded as sh
from geoalign_store.store import StoreError
from pipelines import index, score
from pipelines.cli import app

REPO = Path(__file__).resolve().parents[1]
FOLDER = "artefacts/indices/mine-D2S-none-ivfpq"


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_rule_follows_the_gallery_and_is_documented():
    p = choose_ivfpq(1_000_000, 768)
    assert factory_string(p, 768) == "PCAR256,IVF4096,PQ64x8" and p["nprobe"] == 64
    assert choose_ivfpq(10_000_000, 768)["nlist"] == 16384 == 2 ** 14
    assert choose_ivfpq(10_000_000, 768)["nprobe"] == 128          # nlist / 64, at most 128
    assert factory_string(choose_ivfpq(60_000_000, 768), 768) == "PCAR256,IVF32768_HNSW32,PQ64x8"
    assert choose_ivfpq(1_000_000_000, 768)["nlist"] == 2 ** 17
    small = choose_ivfpq(50, 128)               # issue 22: the demo's 50 satellites must work
    assert factory_string(small, 128) == "IVF1,PQ32x5"
    assert choose_ivfpq(300, 40)["m"] == 10     # m divides d_out, >= 4 dimensions a sub-quantizer
    assert choose_ivfpq(1_000_000, 768, {"nlist": 1024, "reduce": "opq"})["reduce"] == "opq"
    assert choose_ivfpq(1_000_000, 768)["kmeans"] == "flat"            # one k-means of 4096
    assert choose_ivfpq(10_000_000, 768)["kmeans"] == "two_level"      # 16384: two levels of 128
    assert "kmeans" not in build_params(choose_ivfpq(1_000_000, 768))   # fingerprints before the key
    assert build_params(choose_ivfpq(10_000_000, 768))["kmeans"] == "two_level"
    assert choose_ivfpq(10_000_000, 768)["sample"] == "rows"            # the chunks' subset on request
    assert build_params(choose_ivfpq(10_000_000, 768, {"sample": "chunks"}))["sample"] == "chunks"


@pytest.mark.parametrize("given, message", [
    ({"nlist": 1024}, r"nlist=1024 needs at least 1024 training points .* has 500: nlist <= 500 fits"),
    ({"m": 60}, r"m=60 does not divide .* d_out=128 .* m in \[1, 2, 4, 8, 16, 32, 64, 128\] fits"),
    ({"nbits": 12}, r"nbits=12 needs 2\^12 training points .* nbits <= 8 fits"),
    ({"d_out": 200}, r"d_out=200 .* d_out <= 128"),
    ({"reduce": "lda"}, r"reduce='lda': takes opq, pca, none"),
    ({"nlsit": 4}, r"unknown ivfpq index_params \['nlsit'\]; valid: nlist, m"),
    ({"nprobe": 0}, r"nprobe=0: must be a positive integer"),
    ({"kmeans": "3level"}, r"kmeans='3level': takes flat, two_level"),
])
def test_parameters_that_cannot_fit_name_what_fits(given, message):
    with pytest.raises(ConfigError, match=message):
        choose_ivfpq(500, 128, given)


def _build_in_memory(folder, x, p, shard_rows, order=None):
    folder.mkdir(parents=True, exist_ok=True)
    save_index(sh.train(x, p, seed=0), folder / "trained.faiss")
    np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float32, shape=x.shape).flush()
    plan = plan_shards(len(x), shard_rows)
    for a, b in (order or plan):
        sh.add_shard(folder, a, b, x)
    sh.merge(folder, plan)
    return plan


def inverted_lists(index) -> list[tuple[bytes, bytes]]:
    """(ids, codes) of every inverted list of an IVF index: what it holds, exactly."""
    lists = faiss.extract_index_ivf(index).invlists
    out = []
    for i in range(lists.nlist):
        n = lists.list_size(i)
        ids = faiss.rev_swig_ptr(lists.get_ids(i), n).tobytes() if n else b""
        codes = faiss.rev_swig_ptr(lists.get_codes(i), n * lists.code_size).tobytes() if n else b""
        out.append((ids, codes))
    return out


@pytest.mark.parametrize("given", [{"nlist": 64, "d_out": 32}, {"nlist": 64, "quantizer": "hnsw", "reduce": "none"},
                                   {"nlist": 64, "quantizer": "hnsw", "kmeans": "two_level"}])
def test_shards_in_any_order_equal_one_index_adding_every_row(tmp_path, given):
    """The reference is the obvious build: the trained index, every row added in order."""
    rng = np.random.default_rng(0)
    x = _unit(np.repeat(rng.standard_normal((600, 48)), 10, 0) + 0.3 * rng.standard_normal((6000, 48)))
    p = choose_ivfpq(len(x), 48, given)
    plan = _build_in_memory(tmp_path / "a", x, p, 1700, order=None)
    _build_in_memory(tmp_path / "b", x, p, 1700, order=plan[::-1])   # shards finished backwards
    reference = faiss.read_index(str(tmp_path / "a/trained.faiss"))
    reference.add_with_ids(x, np.arange(len(x)))
    merged, backwards = (load_merged(tmp_path / f, p["nprobe"]) for f in ("a", "b"))
    assert inverted_lists(merged.index) == inverted_lists(reference) == inverted_lists(backwards.index)
    queries = _unit(x[::7] + 0.05 * rng.standard_normal(x[::7].shape))
    faiss.extract_index_ivf(reference).nprobe = p["nprobe"]
    q = faiss.downcast_index(faiss.extract_index_ivf(reference).quantizer)
    if isinstance(q, faiss.IndexHNSW):
        q.hnsw.efSearch = max(q.hnsw.efSearch, 2 * p["nprobe"])
    want_d, want_i = reference.search(queries, 10)
    got_s, got_i = search(merged, queries, 10)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, 1 - want_d / 2, atol=1e-6)
    assert np.array_equal(np.load(tmp_path / "a/vectors.npy"), x)


def test_reranking_the_whole_gallery_is_exact_search(tmp_path):
    rng = np.random.default_rng(1)
    x = _unit(rng.standard_normal((3000, 32)))
    p = choose_ivfpq(len(x), 32, {"nlist": 16, "m": 4})     # coarse codes: many wrong answers
    _build_in_memory(tmp_path, x, p, 1000)
    queries = _unit(x[:400] + 0.2 * rng.standard_normal((400, 32)))
    exact = np.argsort(-(queries @ x.T), axis=1, kind="stable")[:, :10]
    codes = load_merged(tmp_path, 16, rerank=0)
    whole = load_merged(tmp_path, 16, rerank=len(x))        # every list probed, all re-ranked
    top100 = load_merged(tmp_path, p["nprobe"], rerank=100)
    assert (search(codes, queries, 10)[1][:, 0] == exact[:, 0]).mean() < 0.9
    scores, ids = search(whole, queries, 10)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ x.T, exact, 1), atol=1e-5)
    assert (ids == exact).mean() > 0.999              # the rest: ties within float rounding
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ x.T, ids, 1), atol=1e-5)
    assert (search(top100, queries, 10)[1][:, 0] == exact[:, 0]).mean() > 0.95


def _index_cfg(store, *extra):
    return compose("index", [f"store={store}", "index=ivfpq", *extra])


def test_stage_on_a_small_store_then_score_beside_the_exact_figures(tmp_path):
    """issue 22's friction: index=ivfpq with the chosen defaults works on a 35-item gallery."""
    store = write_plain_store(tmp_path / "s.zarr", noise=0.3)
    built = index.run(_index_cfg(store))["indices"][0]
    assert built["built"] and built["factory"] == "IVF1,PQ8x5" and built["shards"]["built"] == 1
    again = index.run(_index_cfg(store, "index_params={nprobe: 1}"))["indices"][0]
    assert not again["built"]                             # nprobe searches, it builds nothing
    exact = score.run(compose("score", [f"store={store}", "pictures=0"]))
    approx = score.run(compose("score", [f"store={store}", "index=ivfpq", "pictures=0"]))
    assert approx["approximate"] and approx["rerank"] == 100
    assert approx["exact"]["recall"] == exact["recall"] == approx["recall"]
    assert (store / "artefacts/scores/mine-none-ivfpq/D2S/metrics.json").exists()
    assert not json.loads((store / "artefacts/scores/mine-none/D2S/metrics.json").read_text())["approximate"]


def test_parameters_that_cannot_fit_exit_2(tmp_path):
    store = write_plain_store(tmp_path / "s.zarr")
    result = CliRunner().invoke(app, ["index", f"store={store}", "index=ivfpq", "index_params={nlist: 1024}"])
    assert result.exit_code == 2, result.output
    said = result.output.replace("\n", "")
    assert "nlist=1024 needs at least 1024 training points" in said and "nlist <= 35 fits" in said


def test_the_method_choices_compose_as_text_and_are_checked_before_any_work(tmp_path):
    from geoalign_store.config.composition import TEXT_INDEX_PARAMS
    from geoalign_store.retrieval.ivf_rule import CHOICES
    assert set(TEXT_INDEX_PARAMS) == set(CHOICES)       # the config layer cannot import the rule
    store = write_plain_store(tmp_path / "s.zarr")
    cfg = _index_cfg(store, "index_params={kmeans: two_level, reduce: none, nlist: 2}")
    assert dict(cfg.index_params) == {"kmeans": "two_level", "reduce": "none", "nlist": 2}
    assert index.run(_index_cfg(store, "index_params={quantizer: hnsw, sample: chunks}"))["indices"][0]["built"]
    with pytest.raises(ConfigError, match="index_params.nlist='many' is not valid"):
        _index_cfg(store, "index_params.nlist=many")
    result = CliRunner().invoke(app, ["index", f"store={store}", "index=ivfpq", "index_params={kmeans: 3level}"])
    assert result.exit_code == 2 and "kmeans='3level': takes flat, two_level" in result.output, result.output


def _big_store(path, seed=0):
    return write_plain_store(path, n_loc=6000, drones=1, distractors=6000, dim=16, noise=0.3, seed=seed)


def test_resumed_damaged_and_changed_builds(tmp_path):
    store = _big_store(tmp_path / "r.zarr")
    first = index.run(_index_cfg(store, "shard_rows=1000"))["indices"][0]
    folder = store / FOLDER
    reference = inverted_lists(load_merged(folder, 16).index)
    (folder / "index.json").unlink()                             # as if killed before the merge
    sh.shard_path(folder, 3000, 4000).with_suffix(".json").unlink()  # ... and within a shard
    shard = sh.shard_path(folder, 5000, 6000)
    kept = sh.shard_path(folder, 0, 1000).stat().st_mtime_ns
    resumed = index.run(_index_cfg(store, "shard_rows=1000"))["indices"][0]
    assert resumed["shards"] == {"n": 12, "built": 1, "reused": 11, "rows": 1000}
    assert resumed["timings"]["train_s"] == 0 and sh.shard_path(folder, 0, 1000).stat().st_mtime_ns == kept
    assert inverted_lists(load_merged(folder, 16).index) == reference
    (folder / "index.json").unlink()
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")  # damaged: same size, other bytes
    with pytest.raises(StoreError, match=rf"shard {shard} is damaged \(its sha256 .*rerun the same command"):
        index.run(_index_cfg(store, "shard_rows=1000"))
    rebuilt = index.run(_index_cfg(store, "shard_rows=1000"))["indices"][0]
    assert rebuilt["shards"]["built"] == 1 and inverted_lists(load_merged(folder, 16).index) == reference
    (folder / "index.ivfdata").write_bytes(b"")                 # a damaged merge: merged again
    assert index.run(_index_cfg(store, "shard_rows=1000"))["indices"][0]["shards"]["built"] == 0
    assert inverted_lists(load_merged(folder, 16).index) == reference
    assert first["n"] == 12000
    group = zarr.open_group(str(store), mode="a")["features/mine/test/satellite/layer_28/desc"]
    group[0] = group[0] + 1                                      # the gallery changed
    result = CliRunner().invoke(app, ["index", f"store={store}", "index=ivfpq", "shard_rows=1000"])
    said = result.output.replace("\n", "")                       # rich wraps long lines
    assert result.exit_code == 2 and "the gallery changed since its shards were written" in said
    assert f"geoalign index store={store} mode=D2S heads=none 'layers=[26,28]' index=ivfpq shard_rows=1000 overwrite=true" in said
    assert index.run(_index_cfg(store, "shard_rows=1000", "overwrite=true"))["indices"][0]["built"]


def test_check_names_damaged_vector_rows_and_shards_and_verify_redoes_only_those(tmp_path):
    from pipelines import check
    store = _big_store(tmp_path / "v.zarr")
    request = ["shard_rows=1000", "index_params={nlist: 64, m: 4}"]
    index.run(_index_cfg(store, *request))
    folder, where = store / FOLDER, FOLDER.removeprefix("artefacts/")
    vectors, lists = np.load(folder / "vectors.npy"), inverted_lists(load_merged(folder, 16).index)
    assert check.run(compose("check", [f"store={store}"]))["ok"]
    on_disk = np.load(folder / "vectors.npy", mmap_mode="r+")
    on_disk[4321, 3] += 1e-3                                     # one float of shard 4000-4999's rows
    on_disk.flush()
    del on_disk
    shard = sh.shard_path(folder, 7000, 8000)
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")  # same size, other bytes
    damaged = check.run(compose("check", [f"store={store}"]))["artefacts_damaged"]
    assert set(damaged) == {f"{where}/vectors.npy rows 4000-4999", f"{where}/shards/{shard.name}"}
    rerun = (f"geoalign index store={store} mode=D2S heads=none 'layers=[26,28]' index=ivfpq 'index_params={{nlist: 64, m: 4}}' "
             "shard_rows=1000 verify=true")
    assert all(why.endswith(f"repair it with: {rerun}") for why in damaged.values()), damaged
    assert "(their sha256)" in damaged[f"{where}/vectors.npy rows 4000-4999"]
    assert not index.run(_index_cfg(store, *request))["indices"][0]["built"]  # a plain load reads no bytes
    repaired = index.run(_index_cfg(store, *request, "verify=true"))["indices"][0]
    assert set(repaired["repaired"]) == {"vectors.npy rows 4000-4999", f"shards/{shard.name}"}
    assert repaired["shards"] == {"n": 12, "built": 2, "reused": 10, "rows": 1000}
    assert repaired["timings"]["train_s"] == 0
    np.testing.assert_array_equal(np.load(folder / "vectors.npy"), vectors)
    assert inverted_lists(load_merged(folder, 16).index) == lists
    assert check.run(compose("check", [f"store={store}"]))["ok"]
    assert index.run(_index_cfg(store, *request, "verify=true"))["indices"][0]["repaired"] == {}
    (folder / "vectors.npy").write_bytes(b"\x93NUMPY")              # lost: every shard's rows
    assert len(check.run(compose("check", [f"store={store}"]))["artefacts_damaged"]) == 13   # + the .npy itself
    assert index.run(_index_cfg(store, *request, "verify=true"))["indices"][0]["shards"]["built"] == 12
    np.testing.assert_array_equal(np.load(folder / "vectors.npy"), vectors)


def _workers(pid: int) -> list[int]:
    """The dask worker processes under a driver (spawned by its nannies)."""
    import psutil
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def test_worker_killed_mid_build_changes_nothing(tmp_path):
    """cluster=local:2; one worker SIGKILLed once the first shard is written; the merged index
    equals the in-process build of the same gallery (codes, ids, search results)."""
    killed, here = _big_store(tmp_path / "k.zarr"), _big_store(tmp_path / "h.zarr")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pipelines.cli", "index", f"store={killed}", "index=ivfpq",
           "shard_rows=250", "cluster=local:2", "--json"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shards, deadline, victim = killed / FOLDER / "shards", time.time() + 120, None
    while victim is None and time.time() < deadline and proc.poll() is None:
        marks = list(shards.glob("*.json")) if shards.exists() else []
        if marks:
            pid = json.loads(marks[0].read_text())["pid"]
            if pid in _workers(proc.pid):
                victim = pid
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    assert victim is not None, "the build finished before a worker could be killed"
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert len(list(shards.glob("*.json"))) == 48
    built = json.loads(out.strip().splitlines()[-1])["indices"][0]
    index.run(_index_cfg(here, "shard_rows=1000"))     # in-process, other shards: the same index
    a, b = load_merged(killed / FOLDER, 16, 100), load_merged(here / FOLDER, 16, 100)
    assert inverted_lists(a.index) == inverted_lists(b.index)
    queries = np.asarray(zarr.open_group(str(here), mode="r")["features/mine/test/drone/layer_28/desc"][:500])
    queries = _unit(np.concatenate([queries, queries], 1))
    for x, y in zip(search(a, queries, 10), search(b, queries, 10)):
        np.testing.assert_array_equal(x, y)
    # a killed worker's finished results are lost with it and recomputed (same bytes) elsewhere
    assert built["built"] and built["shards"]["built"] == 48 and built["worker_rss_mb"]
    shutil.rmtree(killed)


@pytest.mark.parametrize("n, size, unit", [(100_000, 4_000, 1_000), (100_000, 4_000, 0), (5_000, 4_000, 1_000),
                                           (10_500, 300, 1_000), (1_000, 10, 5_000)])
def test_training_sample_reads_few_chunks_and_is_a_seeded_set_of_rows(n, size, unit):
    """The sample comes from as few storage chunks as give it a quarter of their rows (a store
    decodes whole chunks: rows from every chunk read the whole gallery)."""
    rows = sh.sample_rows(n, size, unit, np.random.default_rng(3))
    assert len(rows) == size == len(np.unique(rows)) and np.all(np.diff(rows) > 0)
    assert rows[0] >= 0 and rows[-1] < n
    np.testing.assert_array_equal(rows, sh.sample_rows(n, size, unit, np.random.default_rng(3)))
    if unit and -(-4 * size // unit) < -(-n // unit):      # fewer chunks than the gallery's suffice
        assert len(np.unique(rows // unit)) <= -(-4 * size // unit)


class _CountedReads:
    """A gallery (StoredEmbeddings) whose reads are counted row by row."""

    def __init__(self, gallery):
        self.gallery, self.shape, self.read = gallery, gallery.shape, []

    def __getitem__(self, key):
        self.read.append(np.atleast_1d(np.arange(self.shape[0])[key]))
        return self.gallery[key]


@pytest.mark.parametrize("reduce", ["pca", "opq"])
def test_the_sample_is_read_once_and_is_the_one_two_reads_gave(tmp_path, monkeypatch, reduce):
    """The reduction's rows and the k-means sample come from one read of the gallery (spilled to
    a scratch file and read back), not two; the reduction and the reduced sample are bitwise those
    of training the reduction on gallery[sub] and reducing gallery[rows] as read (the old path),
    so an index trained from the same seeded rows is the same index."""
    from geoalign_store.retrieval import open_direction, side_embeddings
    monkeypatch.setattr(sh, "READ_ROWS", 1000)       # several chunks at this size
    store = _big_store(tmp_path / "s.zarr")
    root, dataset, embedder, sets = open_direction(compose("index", [f"store={store}"]))
    gallery = _CountedReads(side_embeddings(root, dataset, embedder, sets[0].gallery))
    d, rng = gallery.shape[1], np.random.default_rng(5)
    rows = np.sort(rng.choice(gallery.shape[0], 4500, replace=False))
    sub = np.sort(rng.choice(rows, 1200, replace=False))
    make = {"pca": lambda: faiss.PCAMatrix(d, 16, 0, True), "opq": lambda: faiss.OPQMatrix(d, 4, 16)}[reduce]
    vt = make()
    sample = sh.reduced_sample(gallery, rows, vt, sub, 16, tmp_path)
    read = np.concatenate(gallery.read)
    np.testing.assert_array_equal(np.sort(read), rows)                      # each sampled row once
    old = make()
    old.train(np.ascontiguousarray(gallery.gallery[sub]))
    expected = np.concatenate([old.apply(np.ascontiguousarray(gallery.gallery[rows[a:a + 1000]]))
                               for a in range(0, len(rows), 1000)])
    np.testing.assert_array_equal(sample, expected)
    for field in ("A", "b"):                                                # the same reduction
        np.testing.assert_array_equal(faiss.vector_to_array(getattr(vt, field)), faiss.vector_to_array(getattr(old, field)))
    assert list(tmp_path.iterdir()) == [store]                              # the spill file is gone


@pytest.mark.parametrize("n, size, before", [(20_000, 401, 0), (20_000, 5_000, 1), (100_000, 30_000, 2),
                                             (1_000_000, 163_840, 0), (10_001, 10_000, 1), (60_000, 59_999, 3),
                                             (1 << 20, 40_000, 2), (5_000, 4_000, 0)])
def test_the_seeded_draw_is_numpys_without_an_array_the_gallery_long(n, size, before, monkeypatch):
    """choice_without_replacement (its swaps always used here) gives rng.choice(n, size,
    replace=False)'s rows in its order and leaves the generator in its state (a buffered 32-bit
    half included: `before` odd), so sample_rows draws what it drew; numpy's own call is taken
    where its arange(n) is the smaller (1e6: yes; 6e7, the rule's 1.3M-row sample: no)."""
    from geoalign_store.retrieval import seeded_draw
    from geoalign_store.retrieval.ivf_rule import train_size
    monkeypatch.setattr(seeded_draw, "SWAP_BYTES", 0)
    numpy_rng, ours = np.random.default_rng(before), np.random.default_rng(before)
    for rng in (numpy_rng, ours):
        rng.random(before)
        if before % 2:
            rng.random(dtype=np.float32)            # leaves half of a 64-bit draw buffered
    np.testing.assert_array_equal(seeded_draw.choice_without_replacement(ours, n, size),
                                  numpy_rng.choice(n, size, replace=False))
    assert ours.bit_generator.state == numpy_rng.bit_generator.state and ours.random() == numpy_rng.random()
    monkeypatch.undo()
    swaps = lambda n: 8 * n > seeded_draw.SWAP_BYTES * train_size(n, choose_ivfpq(n, 768))  # noqa: E731
    assert not swaps(1_000_000) and swaps(60_000_000)
