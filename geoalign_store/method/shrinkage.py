"""Ridge maps and their shrinkage, chosen on pseudo-pairs (issue 24, item 3: capacity that fits
the data). Pure functions of arrays: drone rows `x`, the satellites their flights were matched
with `y`, and each row's flight. Used by candidates.maps; the simulator's oracle uses ridge_path.
"""

from __future__ import annotations

import numpy as np


def ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    xt = x.T.astype(np.float64)
    return np.linalg.solve(xt @ x + lam * np.eye(x.shape[1]), xt @ y).astype(np.float32)


def _eigen_ridge(x: np.ndarray, y: np.ndarray):
    """x^T x = V diag(e) V^T and V^T x^T y: the ridge solution for any lambda is
    V diag(1 / (e + lam)) V^T x^T y."""
    evals, evecs = np.linalg.eigh(x.T @ x)
    return evals, evecs, evecs.T @ (x.T @ y)


def ridge_path(x: np.ndarray, y: np.ndarray):
    """Ridge solutions for many lambdas from one eigendecomposition of x^T x: lam -> W."""
    evals, evecs, xty = _eigen_ridge(x, y)
    return lambda lam: evecs @ (xty / (evals + lam)[:, None])


def ridge_lambda(x, y, flights, seed: int, folds: int = 1) -> float:
    """Shrinkage chosen like the simulator's oracle, but on pseudo-pairs: the flights are cut into
    fifths; for each of the first `folds` fifths in turn, fit on the other flights and count the
    fifth's mapped drones that retrieve their flight's satellite among that fifth's satellites.
    The lambda with the most hits over the folds wins (ties: the least shrinkage). One fifth
    (`folds=1`, the rule before) is a noisy judge: on random world 19 its rates were flat to two
    points across the grid, and which lambda won was the fifth's draw."""
    uniq = np.random.default_rng(seed).permutation(np.unique(flights))
    n_val = max(1, len(uniq) // 5)
    cuts = [uniq[i * n_val:(i + 1) * n_val] if i < 4 else uniq[4 * n_val:] for i in range(min(folds, 5))]
    hits, lams = np.zeros(len(RIDGE_GRID)), []
    for held in (c for c in cuts if len(c)):
        fold_hits, lam_of = _fold_hits(x, y, flights, np.isin(flights, held))
        hits, lams = hits + fold_hits, lams + [lam_of]
    # the lambda is rescaled from the fold's rows to all rows, as the fit of every map uses all
    return float(np.mean([lam_of[int(np.argmax(hits))] for lam_of in lams]))


RIDGE_GRID = np.logspace(-3, 1, 9)   # times the mean eigenvalue of x^T x: the data's own scale


def _fold_hits(x, y, flights, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per lambda of the grid, the held-out rows `val` retrieving their flight's target among the
    held-out flights' targets, with ridge fitted on the other rows; and the grid in all rows' units."""
    fit_x = x[~val].astype(np.float64)
    evals, evecs, xty = _eigen_ridge(fit_x, y[~val].astype(np.float64))
    rotated = x[val].astype(np.float64) @ evecs   # the held-out rows in the eigenbasis, once for every lambda
    lams = RIDGE_GRID * float(np.einsum("ij,ij->", fit_x, fit_x)) / x.shape[1]   # trace of x^T x
    # one target a held-out flight (its satellite, matched one-to-one), found by flight: the rows
    # of one satellite in map coordinates differ in their last bits (a row's product depends on
    # its place in the block), and told apart as rows they made each flight's satellite two
    # near-equal targets, a coin flip between them counted as a miss half the time
    _, first, target_of = np.unique(flights[val], return_index=True, return_inverse=True)
    targets = y[val][first]
    # a row's retrieval is the argmax of its mapped vector's scores, which its length does not
    # change: the scores straight from the eigenbasis, (n x D)(D x m) a lambda, not (n x D)(D x D)
    to_targets = xty @ targets.T.astype(np.float64)
    hits = [np.sum(np.argmax((rotated / (evals + lam)) @ to_targets, 1) == target_of.ravel()) for lam in lams]
    return np.array(hits, np.float64), lams * len(x) / max(int((~val).sum()), 1)
