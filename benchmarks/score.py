"""Scoring benchmark (SPEC §6, issue 3): official loop vs our metrics vs the physical floor,
peak RSS of streamed scoring at 1e4..1e6 gallery items, and ANN recall/speed against flat.

    python benchmarks/score.py                      # u1652 + rss (~10 min on 2 idle cores)
    python benchmarks/score.py --ann                # + IVF-PQ / HNSW against flat (~2 min more)
    python benchmarks/score.py --parts u1652 --loop-queries 500
    python benchmarks/score.py --parts rss --rss-sizes 1e4,1e5

All data are random L2-normalised vectors with University-1652's counts (701 query locations,
250 gallery-only ones, 54 drone images per location, one location with 55 so that the totals are
the real 37,855 / 51,355). Timings are wall clock, best of --repeat runs, on whatever else is
running on this machine (the load average is printed).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from geoalign_store.retrieval import retrieval_metrics, score_retrieval  # noqa: E402


def normalise(x: torch.Tensor) -> torch.Tensor:
    return x.div_(x.norm(dim=1, keepdim=True))


def best_of(fn, repeat):
    """(min seconds, last result) over `repeat` calls."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


# ------------------------------------------------------------ (a) the official protocol loop
# Transcribed from evaluate_gpu.py of layumi/University1652-Baseline (features on CPU here).

def official_compute_map(index, good_index, junk_index):
    ap = 0
    cmc = torch.IntTensor(len(index)).zero_()
    if good_index.size == 0:
        cmc[0] = -1
        return ap, cmc
    index = index[np.isin(index, junk_index, invert=True)]
    ngood = len(good_index)
    rows_good = np.argwhere(np.isin(index, good_index)).flatten()
    cmc[rows_good[0]:] = 1
    for i in range(ngood):
        precision = (i + 1) * 1.0 / (rows_good[i] + 1)
        old_precision = i * 1.0 / rows_good[i] if rows_good[i] != 0 else 1.0
        ap = ap + (1.0 / ngood) * (old_precision + precision) / 2
    return ap, cmc


def official_loop(qf, ql, gf, gl):
    cmc, ap = torch.IntTensor(len(gl)).zero_(), 0.0
    for i in range(len(ql)):
        score = torch.mm(gf, qf[i].view(-1, 1)).squeeze(1).cpu().numpy()
        index = np.argsort(score)[::-1]
        ap_tmp, cmc_tmp = official_compute_map(index, np.argwhere(gl == ql[i]), np.argwhere(gl == -1))
        if cmc_tmp[0] == -1:
            continue
        cmc = cmc + cmc_tmp
        ap += ap_tmp
    return {"1": int(cmc[0]) / len(ql), "1%": int(cmc[round(len(gl) * 0.01)]) / len(ql), "ap": ap / len(ql)}


# ------------------------------------------------------------ part 1: University-1652 size

def u1652_data(dim, seed=0):
    """Satellites (951 locations), drones (54 per location, 55 for location 0), both directions."""
    g = torch.Generator().manual_seed(seed)
    sat = normalise(torch.randn(951, dim, generator=g))
    per = np.full(951, 54)
    per[0] = 55
    drone_lab = np.repeat(np.arange(951), per)
    drone = normalise(sat[torch.from_numpy(drone_lab)] + torch.randn(len(drone_lab), dim, generator=g)
                      * (25.0 / dim ** 0.5))  # own-satellite cosine ~0.04 vs ~N(0, 0.016): R@1 well below 1
    q_mask = drone_lab < 701
    return sat, np.arange(951), drone, drone_lab, q_mask


def floor(q, g, sort_rows):
    """Bare similarity product in blocks of the same memory budget (+ numpy's in-place row sort)."""
    step = max(1, (256 << 20) // (4 * g.shape[0]))
    for a in range(0, len(q), step):
        s = q[a:a + step] @ g.T
        if sort_rows:
            s.numpy().sort(axis=1)


def time_loop(q, ql, g, gl, n_loop):
    """The official loop on n_loop random queries, extrapolated to all. Its many tiny torch calls
    stall on thread barriers when other processes share the cores, so it runs with whichever of
    the default thread count and 1 thread is faster on a 20-query calibration (its best case)."""
    rng = np.random.default_rng(0)
    sub = np.sort(rng.choice(len(ql), n_loop, replace=False)) if n_loop < len(ql) else np.arange(len(ql))
    default = torch.get_num_threads()
    calib = {}
    for nt in sorted({default, 1}):
        torch.set_num_threads(nt)
        calib[nt], _ = best_of(lambda: official_loop(q[sub[:20]], ql[sub[:20]], g, gl), 1)
    threads = min(calib, key=calib.get)
    torch.set_num_threads(threads)
    t_loop, ref = best_of(lambda: official_loop(q[sub], ql[sub], g, gl), 1)
    torch.set_num_threads(default)
    return t_loop * len(ql) / len(sub), ref, sub, threads


def run_direction(name, q, ql, g, gl, loop_n, repeat, sort_floor):
    n_loop = min(loop_n, len(ql)) if loop_n else len(ql)
    t_loop, ref, sub, threads = time_loop(q, ql, g, gl, n_loop)
    mine_sub = retrieval_metrics(q[sub], g, ql[sub], gl)
    diff = max(abs(ref["1"] - mine_sub["recall"]["1"]), abs(ref["1%"] - mine_sub["recall"]["1%"]),
               abs(ref["ap"] - mine_sub["ap"]))
    t_fast = t_topk = t_floor = float("inf")
    for _ in range(repeat):  # interleaved, so that (b) and (c) see the same background load
        t_floor = min(t_floor, best_of(lambda: floor(q, g, sort_floor), 1)[0])
        t, m = best_of(lambda: retrieval_metrics(q, g, ql, gl), 1)
        t_fast = min(t_fast, t)
        t_topk = min(t_topk, best_of(lambda: score_retrieval(q, g, ql, gl, topk=10), 1)[0])
    how = (f"timed on {n_loop} random queries, x{len(ql) / n_loop:.2f} extrapolated" if n_loop < len(ql)
           else "all queries") + f", {threads} thread(s)"
    print(f"\n{name}: {len(ql)} queries x {len(gl)} gallery, d={q.shape[1]}, load average {os.getloadavg()[0]:.1f}")
    print(f"  (a) official per-query loop       {t_loop:8.2f} s   ({how})")
    print(f"  (b) retrieval_metrics             {t_fast:8.2f} s   (with top-10 ids as well: {t_topk:.2f} s)")
    print(f"  (c) floor: q @ g.T{' + row sort' if sort_floor else '           '}        {t_floor:8.2f} s")
    print(f"  (a)/(b) = {t_loop / t_fast:6.1f} x      (b)/(c) = {t_fast / t_floor:5.2f}   (target <= 1.5)")
    print(f"  R@1 {m['recall']['1']:.4f}  R@1% {m['recall']['1%']:.4f}  AP {m['ap']:.4f}  AP(non-interp) "
          f"{m['ap_noninterp']:.4f};  |loop - ours| on the timed queries: {diff:.1e}")
    if diff > 1e-9:
        print("  (float32 near-ties ranked differently by the loop's gemv and our gemm rounding; in "
              "float64 the two agree to ~1e-16, see tests/test_metrics.py)")


def part_u1652(args):
    sat, sat_lab, drone, drone_lab, q_mask = u1652_data(args.dim)
    qd = drone[torch.from_numpy(q_mask)].contiguous()
    run_direction("D2S", qd, drone_lab[q_mask], sat, sat_lab, args.loop_queries, args.repeat, False)
    del qd
    run_direction("S2D", sat[:701].contiguous(), sat_lab[:701], drone, drone_lab, 0, args.repeat, True)


# ------------------------------------------------------------ part 2: peak RSS, streamed gallery

class RandomGallery:
    """A lazily generated (n, dim) gallery of unit vectors: rows come in seeded 1024-row blocks,
    so any slice or row set is reproducible without ever holding the whole array (as a zarr
    array would be read). `chunks` tells the scorer to read whole 16384-row chunks."""

    BLOCK = 1024

    def __init__(self, n, dim, seed=1):
        self.shape, self.dtype, self.seed = (n, dim), np.float32, seed
        self.chunks = (16 * self.BLOCK, dim)
        self._cache = (None, None)

    def _block(self, b):
        if self._cache[0] != b:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(b))
            rows = min(self.BLOCK, self.shape[0] - b * self.BLOCK)
            self._cache = (b, normalise(torch.randn(rows, self.shape[1], generator=g)).numpy())
        return self._cache[1]

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, _ = key.indices(self.shape[0])
            out = np.empty((stop - start, self.shape[1]), np.float32)
            for b in range(start // self.BLOCK, (stop - 1) // self.BLOCK + 1):
                lo, hi = max(start, b * self.BLOCK), min(stop, (b + 1) * self.BLOCK)
                out[lo - start:hi - start] = self._block(b)[lo - b * self.BLOCK:hi - b * self.BLOCK]
            return out
        key = np.asarray(key)
        return np.stack([self._block(i // self.BLOCK)[i % self.BLOCK] for i in key]) if len(key) else \
            np.empty((0, self.shape[1]), np.float32)


def rss_child(n_gallery, n_queries, dim):
    """Score n_queries against a streamed n_gallery x dim gallery; print timing and own peak RSS."""
    gallery = RandomGallery(n_gallery, dim)
    gl = np.arange(n_gallery) // 54
    ql = np.arange(n_queries) // 54 % (gl[-1] + 1)
    own = torch.from_numpy(gallery[np.minimum(ql * 54 + np.arange(n_queries) % 54, n_gallery - 1)])
    q = normalise(own + 1.2 * torch.randn(n_queries, dim, generator=torch.Generator().manual_seed(2)) / dim ** 0.5)
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    res = score_retrieval(q, gallery, ql, gl, topk=10)
    print(json.dumps({"n_gallery": n_gallery, "seconds": time.perf_counter() - t0,
                      "rss_before_mb": rss_before, "metrics": res.metrics,
                      "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb():
    """This process's peak RSS (VmHWM). Not getrusage: a child's ru_maxrss starts from the
    forking parent's peak (2.5 GB after the u1652 part), which would hide the child's own."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def part_rss(args):
    print(f"\nPeak RSS: {args.rss_queries} queries, d={args.dim}, gallery streamed in 16384-row chunks "
          f"(lazily generated; a flat exact scan + running top-10 + exact rank counts), one process each")
    for n in [int(float(s)) for s in args.rss_sizes.split(",")]:
        cmd = [sys.executable, __file__, "--rss-child", str(n), "--rss-queries", str(args.rss_queries),
               "--dim", str(args.dim)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        gb = n * args.dim * 4 / 1e9
        print(f"  gallery {n:>9,} ({gb:6.2f} GB as float32): peak RSS {r['peak_rss_mb']:6.0f} MB "
              f"(of which {r['rss_before_mb']:4.0f} MB before scoring: python, torch, the queries), "
              f"{r['seconds']:6.1f} s, R@1 {r['metrics']['recall']['1']:.3f}")


# ------------------------------------------------------------ part 3: approximate indices

def part_ann(args):
    """A hard case for ANN: each location's views and its queries are the location centre plus
    noise (cosine ~0.6 to the centre), so a query's flat top-10 is decided by fine distances
    among its location's 50 views, which coarse codes blur."""
    import faiss
    from geoalign_store.retrieval import build_index, search
    if args.faiss_threads:
        faiss.omp_set_num_threads(args.faiss_threads)
    n, dim, views = args.ann_gallery, args.ann_dim, 50
    n_loc, noise = n // views, 0.8 / args.ann_dim ** 0.5
    g = torch.Generator().manual_seed(3)
    centres = normalise(torch.randn(n_loc, dim, generator=g))
    gallery = normalise(centres.repeat_interleave(views, 0) + noise * torch.randn(n_loc * views, dim, generator=g)).numpy()
    pick = torch.randperm(n_loc, generator=g)[:args.ann_queries]
    queries = normalise(centres[pick] + noise * torch.randn(len(pick), dim, generator=g)).numpy()
    print(f"\nANN: gallery {len(gallery):,} x d={dim} ({n_loc:,} locations x {views} views), {len(queries)} queries, "
          f"recall@10 = |top-10 ∩ flat top-10| / 10; faiss threads {faiss.omp_get_max_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    flat_ids = None
    for kind, params in [("flat", None), ("ivfpq", {"nlist": 1024, "m": 32, "nbits": 8, "nprobe": 32}),
                         ("hnsw", {"M": 32, "efConstruction": 200, "efSearch": 128})]:
        t_build, index = best_of(lambda: build_index(gallery, kind, params), 1)
        t_search, (_, ids) = best_of(lambda: search(index, queries, 10), 1)
        flat_ids = ids if flat_ids is None else flat_ids
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, flat_ids)])
        print(f"  {kind:6s} {str(params or ''):58s} build {t_build:6.1f} s  search {t_search:6.3f} s "
              f"({1e3 * t_search / len(queries):.3f} ms/query)  recall@10 {recall:.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="u1652,rss", help="comma list of u1652, rss, ann")
    ap.add_argument("--ann", action="store_true", help="add the ann part")
    ap.add_argument("--dim", type=int, default=3840)
    ap.add_argument("--repeat", type=int, default=3, help="best of N for (b) and (c)")
    ap.add_argument("--loop-queries", type=int, default=3000, help="D2S queries timed in the loop (0 = all)")
    ap.add_argument("--rss-sizes", default="1e4,1e5,1e6")
    ap.add_argument("--rss-queries", type=int, default=10000)
    ap.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ann-gallery", type=int, default=100_000)
    ap.add_argument("--ann-dim", type=int, default=256)
    ap.add_argument("--ann-queries", type=int, default=1000)
    ap.add_argument("--faiss-threads", type=int, default=0, help="0 = faiss's default")
    args = ap.parse_args()
    if args.rss_child:
        return rss_child(args.rss_child, args.rss_queries, args.dim)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    parts = args.parts.split(",") + (["ann"] if args.ann else [])
    for name, fn in [("u1652", part_u1652), ("rss", part_rss), ("ann", part_ann)]:
        if name in parts:
            fn(args)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
