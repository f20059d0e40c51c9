"""The coarse quantizer's centroids by two-level k-means, for IVF lists too many for one k-means.

One k-means of nlist centroids over a sample of ~40 nlist points costs sample x nlist, which
grows as N (nlist ~ sqrt(N)): 16x the 1e6 build's at 1e7, 1,024x at 1e9. Two levels (faiss's
`contrib/clustering.py` `two_level_clustering`: sqrt(nlist) coarse clusters, each split by a
k-means of its own into a share of nlist proportional to its size) cost sample x 2 sqrt(nlist).

Why not that function itself: it gives a coarse cluster of fewer than N / nlist points zero
sub-centroids, and faiss's k-means of k = 0 raises, so an outlier cluster of the sample ends the
build. Here every non-empty cluster gets at least one and at most its size (largest remainders),
the rest of the recipe is the same (2,000 points a coarse centroid, seeded levels).
"""
from __future__ import annotations

import faiss
import numpy as np

from .index import gpu_flat_l2

COARSE_MAX_POINTS = 2000   # faiss contrib's first level: sample at most 2,000 points a centroid


def split_counts(sizes: np.ndarray, total: int) -> np.ndarray:
    """Sub-centroids per coarse cluster: proportional to `sizes` (largest remainders), summing to
    `total`, at least 1 for a non-empty cluster, at most its size. Needs total >= the non-empty
    clusters and <= sizes.sum()."""
    sizes = np.asarray(sizes, np.int64)
    share = sizes * (total / sizes.sum())
    counts = np.minimum(np.maximum(np.floor(share), sizes > 0), sizes).astype(np.int64)
    while counts.sum() != total:   # at most len(sizes) steps: floors lose < 1 a cluster
        gap = share - counts
        if counts.sum() < total:
            counts[np.argmax(np.where(counts < sizes, gap, -np.inf))] += 1
        else:
            counts[np.argmin(np.where(counts > 1, gap, np.inf))] -= 1
    return counts


def two_level_centroids(sample: np.ndarray, nlist: int, niter: int, seed: int, gpu: int | None = None) -> np.ndarray:
    """(nlist, d) float32 centroids of `sample` (float32, C-contiguous, >= nlist rows); each
    k-means's assignment on GPU `gpu` when given (index.py's resources of that GPU)."""
    d = sample.shape[1]
    options = {"niter": niter, "min_points_per_centroid": 1}
    n_coarse = max(1, int(np.sqrt(nlist)))
    coarse = _on_gpu(faiss.Kmeans(d, n_coarse, seed=seed, max_points_per_centroid=COARSE_MAX_POINTS, **options), gpu)
    coarse.train(sample)
    assign = coarse.index.search(sample, 1)[1].ravel()
    sizes = np.bincount(assign, minlength=n_coarse)
    counts = split_counts(sizes, nlist)
    order = np.argsort(assign, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    parts = []
    for c in np.flatnonzero(counts):   # one k-means per coarse cluster (sqrt(nlist) of them)
        fine = _on_gpu(faiss.Kmeans(d, int(counts[c]), seed=seed + 1 + int(c), **options), gpu)
        fine.train(np.ascontiguousarray(sample[order[starts[c]:starts[c + 1]]]))
        parts.append(fine.centroids)
    return np.ascontiguousarray(np.vstack(parts), np.float32)


def _on_gpu(kmeans, gpu: int | None):
    """`kmeans` searching its centroids on GPU `gpu` (None: as made, on the CPU). Not faiss's
    Kmeans(gpu=True): that clones to every GPU with resources of its own, a second owner of
    each GPU's scratch memory beside index.py's."""
    if gpu is not None:
        kmeans.index = gpu_flat_l2(kmeans.d, gpu)
    return kmeans
