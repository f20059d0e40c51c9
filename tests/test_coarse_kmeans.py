"""Two-level k-means for the coarse quantizer (issue 23, retrieval/coarse_kmeans.py): the split of
nlist over the coarse clusters, and centroids that quantize about as well as one k-means,
including a sample whose outliers form a cluster too small for a proportional share."""
from __future__ import annotations

import faiss
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as hs

from geoalign_store.retrieval import split_counts, two_level_centroids


@settings(max_examples=200, deadline=None, derandomize=True)
@given(hs.lists(hs.integers(0, 5000), min_size=1, max_size=40), hs.data())
def test_split_is_proportional_and_never_empty_nor_over_a_cluster(sizes, data):
    sizes = np.array(sizes)
    if sizes.sum() == 0:
        return
    total = data.draw(hs.integers(int((sizes > 0).sum()), int(sizes.sum())))
    counts = split_counts(sizes, total)
    assert counts.sum() == total
    assert np.all((counts >= 1) == (sizes > 0)) and np.all(counts <= sizes)
    share = sizes * total / sizes.sum()
    free = (counts > 1) & (counts < sizes)         # neither floor nor ceiling bound it
    assert np.all(np.abs(counts - share)[free] < 1 + (sizes > 0).sum())


def _quantization_error(x, centroids):
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(centroids)
    return float(index.search(x, 1)[0].mean())


def test_two_levels_quantize_about_as_well_as_one_kmeans_and_survive_outliers():
    rng = np.random.default_rng(0)
    x = np.repeat(rng.standard_normal((300, 32)), 20, 0) + 0.4 * rng.standard_normal((6000, 32))
    x = np.concatenate([x, 40 + rng.standard_normal((3, 32))]).astype(np.float32)  # 3 far outliers
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        two = two_level_centroids(x, 256, niter=10, seed=0)
        one = faiss.Kmeans(32, 256, niter=10, seed=0, min_points_per_centroid=1)
        one.train(x)
    finally:
        faiss.omp_set_num_threads(before)
    assert two.shape == (256, 32) and two.dtype == np.float32
    assert _quantization_error(x, two) < 1.15 * _quantization_error(x, one.centroids)
    assert np.min(np.linalg.norm(two[:, None] - x[-3:].mean(0), axis=2)) < 5   # the outliers have one
    np.testing.assert_array_equal(two, two_level_centroids(x, 256, niter=10, seed=0))  # seeded
