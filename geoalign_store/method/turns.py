"""The null of the label-free criterion (select.null_adjust): a space's satellites reflected at
random along their own principal axes, which keeps the set's mean, covariance and span but breaks
its correspondence with the drones; read through similarities only (`SatelliteSets`)."""

from __future__ import annotations

import numpy as np

NULL_TURNS = 4  # turned satellite sets the null score averages (one alone is as noisy as the score)


def principal(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, principal axes of the centred rows, as unit vectors over the *rows*, one column
    each, by decreasing variance: min(n, D) of them). From the n x n Gram matrix: a few hundred
    satellites in up to thousands of dimensions (an SVD there was 14% of a selection)."""
    mean = x.mean(0)
    xc = (x - mean).astype(np.float64)
    _, rows = np.linalg.eigh(xc @ xc.T)
    return mean, rows[:, ::-1][:, :min(x.shape)]


class Turns:
    """A seeded random reflection of a satellite set along its own principal axes (each axis'
    sign flipped or kept): the set keeps its mean, its covariance and the subspace it spans, but
    loses any correspondence with the drones. (A random rotation of the whole space would move
    the satellites off the subspace they share with the drones and make every space look
    better than chance.)"""

    def __init__(self, seed: int, index: int = 0):
        self.key = (seed, index)

    def __call__(self, x: np.ndarray, basis: tuple | None = None) -> np.ndarray:
        mean, rows = principal(x) if basis is None else basis
        flip = self.flip(rows.shape[1], x.shape[1])
        # reflecting the centred rows' components along the flipped principal axes is
        # (I - 2 U_f U_f^T) applied over the rows, U_f those axes' unit row-space vectors
        u = rows[:, flip]
        return (x - 2 * u @ (u.T @ (x - mean))).astype(x.dtype)

    def flip(self, axes: int, dim: int) -> np.ndarray:
        """Which of `axes` principal axes (of a set in `dim` dimensions) this turn flips."""
        return np.random.default_rng([*self.key, dim]).random(axes) < 0.5


class SatelliteSets:
    """A space's satellites and, given `turns`, turned copies of them, read through their
    similarities with given rows only. A copy is never built: with S = y sat^T, y turn(sat)^T =
    S - 2 (S - (y mean) 1^T) U_f U_f^T (U_f the flipped axes over the rows), which costs n x n
    per row where y turn(sat)^T costs n x D (~700 train satellites, up to thousands of
    dimensions)."""

    def __init__(self, sat: np.ndarray, turns: list[Turns] = (), only: np.ndarray | None = None):
        # only: the satellites turned (their own mean and axes); the others stay as they are
        self.sat, self.flipped, self.only = sat, [], only
        if turns:
            self.mean, axes = principal(sat if only is None else sat[only])
            self.axes = axes.astype(np.float32)
            flips = [turn.flip(axes.shape[1], sat.shape[1]) for turn in turns]
            self.flipped = [(f, np.ascontiguousarray(self.axes[:, f].T)) for f in flips]

    def __len__(self) -> int:
        return 1 + len(self.flipped)

    def similarities(self, y: np.ndarray) -> list[np.ndarray]:
        """[y sat^T, then y turn(sat)^T for each turn]. Rows of K vectors each, (n, K, d) (the
        best-of-maps rule), score each satellite by their best: max over the K."""
        if y.ndim == 3:
            n, k, d = y.shape
            return [sim.reshape(n, k, -1).max(1) for sim in self.similarities(y.reshape(n * k, d))]
        return self.with_turns(y @ self.sat.T, y)

    def with_turns(self, s: np.ndarray, y: np.ndarray | None = None) -> list[np.ndarray]:
        """[s, then each turned copy's similarities] from the rows' similarities `s` with the
        satellites alone (a fusion read through its streams: spaces.py). The rows' inner
        product with the turned satellites' mean is `y`'s with it when the rows are given, else
        the mean of `s` over those satellites: the same number, to rounding."""
        if not self.flipped:
            return [s]
        part = s if self.only is None else s[:, self.only]
        at_mean = y @ self.mean if y is not None else part.mean(1)
        c = (part - at_mean[:, None]) @ self.axes
        out = [s]
        for flip, axes_t in self.flipped:
            turned = c[:, flip] @ axes_t
            turned *= -2.0        # s - 2 (c_f U_f^T), in place: the same numbers, no temporaries
            turned += part
            if self.only is not None:
                turned, whole = s.copy(), turned
                turned[:, self.only] = whole
            out.append(turned)
        return out
