"""A country as the gallery (issue 23): `geoalign index index=ivfpq` on a simulated store of N tiles,
built shard by shard on `cluster=local:W`, against the exact search, in one run.

    flock /tmp/geoalign-bench.lock python benchmarks/scale.py --n 1e6 --root /work/bench-scale
    python benchmarks/scale.py --n 2e5 --workers 2 --queries 1000      # a few minutes

The store is written block by block (never whole in memory) as a feature store of one 768-d layer:
tiles in regions of `--region` neighbours (a map's overlapping tiles: similar, the hard
negatives) on a low-rank manifold (the structure a PCA finds) plus white noise; each query is a
gallery tile plus noise (so the exact search finds it: R@1 ~ 1). Printed: the build's train /
add / merge seconds (from `geoalign index --json`, run as a process of its own), the peak RSS of
its driver and of each dask worker, the index's size on disk, 1-recall@1 and recall@10 of the
index against the exact top 10 (codes only, and re-ranked), and the latency of one query and of a
batch. The exact top 10 are computed here by streaming the gallery from the store.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from geoalign_store import store as st  # noqa: E402
from geoalign_store.config import fingerprint  # noqa: E402
from geoalign_store.datasets import ViewListing  # noqa: E402

LAYER = 28


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def tiles(block: int, rows: range, dim: int, region: int, mix: np.ndarray, seed: int) -> np.ndarray:
    """The tiles of one block (regions never straddle blocks: block sizes are multiples of region)."""
    rng = np.random.default_rng([seed, block])
    n_regions = -(-len(rows) // region)
    centres = rng.standard_normal((n_regions, mix.shape[0]), dtype=np.float32)
    local = np.repeat(centres, region, 0)[:len(rows)] + 0.6 * rng.standard_normal((len(rows), mix.shape[0]), dtype=np.float32)
    return _unit(local @ mix + 0.5 * rng.standard_normal((len(rows), dim), dtype=np.float32) / np.sqrt(dim / mix.shape[0]))


def write_store(path: Path, n: int, dim: int, n_queries: int, region: int, seed: int, block: int) -> np.ndarray:
    """The simulated store; returns the gallery rows the queries copy."""
    rng = np.random.default_rng(seed)
    rank = 96
    mix = (rng.standard_normal((rank, dim)) * (0.97 ** np.arange(rank))[:, None]).astype(np.float32)
    root = st.open_store(str(path), mode="a")
    spec = {"backbone": "scale-benchmark", "n": n, "dim": dim, "seed": seed, "region": region, "layers": [LAYER]}
    st.prepare_dataset(root, "scale", spec, fingerprint(spec), True)
    sat = ViewListing("test", "satellite", [f"tile/{i}" for i in range(n)], np.arange(n, dtype=np.int64),
                      np.ones(n, bool), np.ones(n, bool))
    group = st.prepare_view(root, "scale", sat, st.ViewLayout([LAYER], dim, block), {"benchmark": spec})
    for b in st.pending_blocks(group):
        rows = st.block_rows(group, b)
        st.write_block(group, b, {f"layer_{LAYER}/desc": tiles(b, range(rows.start, rows.stop), dim, region, mix, seed)},
                       [""] * (rows.stop - rows.start))
    st.finalize_view(group)
    picked = np.sort(rng.choice(n, n_queries, replace=False))
    base = np.asarray(group[f"layer_{LAYER}/desc"].get_orthogonal_selection((picked, slice(None))))
    queries = _unit(base + 0.2 * rng.standard_normal(base.shape).astype(np.float32) / np.sqrt(dim / rank))
    drone = ViewListing("test", "drone", [f"query/{i}" for i in range(n_queries)], picked.astype(np.int64),
                        np.ones(n_queries, bool), np.ones(n_queries, bool))
    qgroup = st.prepare_view(root, "scale", drone, st.ViewLayout([LAYER], dim, n_queries), {"benchmark": spec})
    st.write_block(qgroup, 0, {f"layer_{LAYER}/desc": queries}, [""] * n_queries)
    st.finalize_view(qgroup)
    return picked


def exact_top(store: Path, queries: np.ndarray, k: int, chunk: int = 65536):
    """The exact top k of every query, the gallery streamed from the store chunk by chunk."""
    array = st.open_store(str(store), mode="r")[f"features/scale/test/satellite/layer_{LAYER}/desc"]
    n = array.shape[0]
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for a in range(0, n, chunk):
        g = _unit(np.asarray(array[a:a + chunk]))
        s = queries @ g.T
        cand_s = np.concatenate([best_s, s], 1)
        cand_i = np.concatenate([best_i, np.broadcast_to(np.arange(a, a + len(g)), s.shape)], 1)
        top = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_i, top, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    best_s, best_i = np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)
    return best_s, best_i


def build(store: Path, workers: int, shard_rows: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "pipelines.cli", "index", f"store={store}", "index=ivfpq", "layers=[28]",
           f"shard_rows={shard_rows}", "--json", *extra] + ([f"cluster=local:{workers}"] if workers else [])
    print("$", " ".join(cmd[2:]), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode:
        sys.exit(f"index failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])["indices"][0]
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def recall(ids: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """(1-recall@1: the exact nearest neighbour ranked first, recall@10: |top10 & exact top10| / 10)."""
    r1 = float((ids[:, 0] == exact[:, 0]).mean())
    r10 = float(np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(ids[:, :10], exact[:, :10])]))
    return r1, r10


def searches(folder: Path, queries: np.ndarray, exact: np.ndarray, nprobe: int, reranks: list[int]) -> list[dict]:
    from geoalign_store.retrieval import load_merged, search
    rows = []
    for r in reranks:
        index = load_merged(folder, nprobe, r)
        search(index, queries[:10], 10)                                  # warm the memory-maps
        t0 = time.perf_counter()
        _, ids = search(index, queries, 10)
        batch = time.perf_counter() - t0
        r1, r10 = recall(ids, exact)
        rows.append({"rerank": r, "nprobe": nprobe, "1-recall@1": r1, "recall@10": r10,
                     "batch_s": round(batch, 3), "one_query_ms": one_query_ms(index, queries),
                     "one_query_1thread_ms": one_query_ms(index, queries, threads=1)})
    return rows


def one_query_ms(index, queries, threads=None, n=200) -> float:
    """Median milliseconds of one query searched alone (threads: FAISS's OpenMP threads)."""
    import faiss
    from geoalign_store.retrieval import search
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads or before)
    times = []
    for q in queries[:n]:
        t0 = time.perf_counter()
        search(index, q[None], 10)
        times.append(time.perf_counter() - t0)
    faiss.omp_set_num_threads(before)
    return round(1000 * float(np.median(times)), 2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=float, default=1e6)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2, help="cluster=local:W (0: in-process)")
    ap.add_argument("--shard-rows", type=int, default=131072)
    ap.add_argument("--region", type=int, default=50, help="tiles a region (similar neighbours)")
    ap.add_argument("--root", default="/tmp/geoalign-scale")
    ap.add_argument("--keep", action="store_true", help="keep the store (default: deleted at the end)")
    ap.add_argument("--reuse", action="store_true", help="reuse a store --keep left (its index rebuilt)")
    ap.add_argument("--nprobe", default="", help="comma list of extra nprobe values to search with")
    ap.add_argument("--index-params", default="", help="e.g. '{nlist: 1024}' (default: the rule's)")
    args = ap.parse_args()
    n, seed = int(args.n), 0
    store = Path(args.root) / f"scale-{n}.zarr"
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    t0 = time.perf_counter()
    block = max(args.region, 16384 // args.region * args.region)
    if args.reuse and store.exists():
        picked = np.asarray(st.open_store(str(store), mode="r")["features/scale/test/drone/labels"][:])
        shutil.rmtree(store / "artefacts/indices", ignore_errors=True)
        print(f"store: {n} x {args.dim} reused ({store})", flush=True)
    else:
        picked = write_store(store, n, args.dim, args.queries, args.region, seed, block)
        print(f"store: {n} x {args.dim} written in {time.perf_counter() - t0:.1f} s ({store})", flush=True)
    queries = _unit(np.asarray(st.open_store(str(store), mode="r")[f"features/scale/test/drone/layer_{LAYER}/desc"][:]))
    t0 = time.perf_counter()
    cached = store / "exact_top10.npy"          # with --keep: what --reuse reads back
    exact_i = np.load(cached) if args.reuse and cached.exists() else exact_top(store, queries, 10)[1]
    np.save(cached, exact_i)
    print(f"exact top 10 of {len(queries)} queries: {time.perf_counter() - t0:.1f} s; the copied tile "
          f"ranked first for {(exact_i[:, 0] == picked).mean():.3f} of them", flush=True)
    extra = [f"index_params={args.index_params}"] if args.index_params else []
    built = build(store, args.workers, args.shard_rows, extra)
    t, folder = built["timings"], store / "artefacts/indices" / built["name"]
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    shards = sum(p.stat().st_size for p in (folder / "shards").glob("*.faiss"))
    print(f"build {built['factory']} ({built['shards']['n']} shards of {args.shard_rows}, cluster=local:{args.workers}): "
          f"train {t['train_s']:.1f} s {t.get('train_parts', {})}, add {t['add_s']:.1f} s, merge {t['merge_s']:.1f} s; "
          f"process wall {built['wall_s']} s")
    print(f"peak RSS: driver {built['driver_rss_mb']} MB, workers {built['worker_rss_mb']} MB")
    print("driver memory after each phase (MB; anon: allocated, file: touched memory-mapped pages):",
          json.dumps(built.get("driver_memory_mb", {})))
    print(f"on disk: index.faiss {sizes['index.faiss'] / 1e6:.1f} MB + index.ivfdata {sizes['index.ivfdata'] / 1e6:.1f} MB "
          f"(shards {shards / 1e6:.1f} MB, vectors.npy for re-ranking {sizes['vectors.npy'] / 1e6:.1f} MB)")
    nprobes = [built["params"]["nprobe"], *(int(v) for v in args.nprobe.split(",") if v)]
    for nprobe in nprobes:
        for row in searches(folder, queries, exact_i, nprobe, [0, 100]):
            print(json.dumps(row), flush=True)
    if not args.keep:
        shutil.rmtree(store)


if __name__ == "__main__":
    main()
