"""AGRA's teacher in the improved recipe (`agra.teacher=isms`): OTCA pseudo-labels between the
satellites and the drone *flights* (the drone groups), from a better space than AGRA's own.

The paper's recipe lets AGRA label itself: an OT plan on the similarities of its randomly
initialised shared space, every step, between the satellites and one drone per group. On the
simulator this reinforces its early mistakes (benchmarks/heads.py). Here the plan is computed
between each satellite and the *mean* embedding of each flight (averaging removes most per-image
distortion; the plan's one-to-one marginals stop many satellites claiming one flight):

* at the start, in the ISMS space (PCA whitening: no pairing needed to build it);
* then every `teacher_refresh` epochs in the fused space of the AGRA being trained and ISMS
  (weights 1/2, the score's default fusion), so pairs AGRA has learnt to see correct the rest.

Only the grouping of drone rows is used: no label of either view is ever compared.
"""

from __future__ import annotations

import numpy as np
import torch

from . import alignment as al
from .headset import l2n

FUSION_WEIGHT = 0.5


def flight_rows(groups: np.ndarray, per_flight: int) -> np.ndarray:
    """Up to `per_flight` rows of every group, evenly spaced in row order, grouped in sorted
    group-id order (deterministic: a refresh needs no random draw)."""
    order = np.argsort(groups, kind="stable")
    _, start, count = np.unique(groups[order], return_index=True, return_counts=True)
    k = np.arange(per_flight)
    take = np.minimum(count, per_flight)
    pos = start[:, None] + (k[None, :] * count[:, None]) // take[:, None]
    return order[pos[k[None, :] < take[:, None]]]


def flight_means(drone_emb, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The L2-normalised mean of each flight's L2-normalised drone embeddings (float64, rows in
    sorted group-id order) and, for every drone row, the index of its flight. Rows of K vectors,
    (n, K, d) (best of maps): the mean of each of the K, (flights, K, d)."""
    sums, inverse = flight_sums(drone_emb, groups)
    return torch.nn.functional.normalize(sums, dim=-1, eps=1e-12).numpy(), inverse


def flight_sums(drone_emb, groups: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """`flight_means` before the last normalisation: each flight's sum of its L2-normalised rows
    (float64), and every row's flight index."""
    _, inverse = np.unique(groups, return_inverse=True)
    sums = torch.zeros(int(inverse.max()) + 1, *drone_emb.shape[1:], dtype=torch.float64)
    # index_add_, not np.add.at: the latter was ~13 s of a 37 s selection at 800 flights
    # torch's float64 copy uses every core (numpy's astype one) and is bitwise the same
    rows = torch.from_numpy(np.ascontiguousarray(drone_emb)).double()
    sums.index_add_(0, torch.from_numpy(inverse), torch.nn.functional.normalize(rows, dim=-1, eps=1e-12))
    return sums, inverse


def flight_plan(sat_emb: np.ndarray, drone_emb: np.ndarray, groups: np.ndarray, epsilon: float,
                n_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Satellites vs the mean embedding of each flight (columns in sorted group-id order: the
    order of :func:`geoalign_store.method.training.draw_one_per_group`), one converged entropic OT plan.
    -> (plan (n_sat, n_groups), cosine (n_sat, n_groups)), float32."""
    means, _ = flight_means(drone_emb, groups)
    sim = torch.from_numpy(l2n(np.asarray(sat_emb, dtype=np.float64)) @ means.T)
    return al.sinkhorn_log(1.0 - sim, epsilon, n_iter).float(), sim.float()


class FlightTeacher:
    """Builds the plan at the start (ISMS space) and at every refresh (fused AGRA + ISMS space)
    from fixed rows: every satellite and `per_flight` drones of every flight."""

    def __init__(self, sat, drone, sat_teacher, drone_teacher, groups, epsilon: float, n_iter: int,
                 per_flight: int = 8):
        """`sat`, `drone`: AGRA's inputs; `sat_teacher`, `drone_teacher`: the same rows embedded
        in the teacher space (whichever the selection chose: ISMS whitening, or a map's)."""
        rows = flight_rows(groups, per_flight)
        self.sat, self.drone = sat, drone[torch.from_numpy(rows)]
        self.sat_teacher, self.drone_teacher = torch.as_tensor(sat_teacher), torch.as_tensor(drone_teacher[rows])
        self.groups, self.epsilon, self.n_iter = groups[rows], epsilon, n_iter

    def initial(self) -> tuple[torch.Tensor, torch.Tensor]:
        return flight_plan(self.sat_teacher.numpy(), self.drone_teacher.numpy(), self.groups,
                           self.epsilon, self.n_iter)

    @torch.no_grad()
    def refresh(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        """In eval mode (no gate noise or dropout: no random number is drawn), then back."""
        from .heads import fuse
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        sat = fuse(model.embed(self.sat.to(device), "satellite").cpu(), self.sat_teacher, FUSION_WEIGHT)
        drone = fuse(model.embed(self.drone.to(device), "drone").cpu(), self.drone_teacher, FUSION_WEIGHT)
        model.train(was_training)
        return flight_plan(sat.numpy(), drone.numpy(), self.groups, self.epsilon, self.n_iter)


def mutual_pairs(plan: torch.Tensor) -> int:
    """How many satellites and flights pick each other in the plan (logged)."""
    return int((plan.argmax(0)[plan.argmax(1)] == torch.arange(len(plan), device=plan.device)).sum())


def agra_candidate(centre, teacher_space, views, recipe, seed: int, resume=None, on_epoch=None,
                   device=None):
    """AGRA as a candidate head: trained on the centred layer-b rows of `views` (the seen
    flights), taught by the flight plan built in `teacher_space` (a Heads) and rebuilt every
    `recipe.teacher_refresh` epochs in the fused space. Its randomness (init, dropout, gate
    noise, draws) lives in a forked RNG seeded by `seed`, so candidates fitted in one process
    are independent; `resume(state)` may restore a checkpoint (which holds that RNG state).
    `device`: where AGRA trains and embeds (the plans are built on the CPU, in float64)."""
    from .training import fit_agra, forked_rng, new_agra_state
    sat = torch.from_numpy(np.ascontiguousarray(centre.stream_input(views.sat, "satellite", "agra")))
    drone = torch.from_numpy(np.ascontiguousarray(centre.stream_input(views.drone, "drone", "agra")))
    t_sat = teacher_space.embed(views.sat, "satellite")
    t_drone = teacher_space.embed(views.drone, "drone")
    device = torch.device(device or "cpu")
    with forked_rng(device):
        teacher = FlightTeacher(sat.to(device), drone.to(device), t_sat, t_drone, views.groups,
                                recipe.teacher_epsilon, recipe.teacher_iters, recipe.teacher_per_flight)
        state = new_agra_state(sat.shape[1], recipe, seed, device)
        if resume is not None:
            resume(state)
        fit_agra(state, sat, drone, views.groups, recipe, on_epoch, teacher)
    return centre.with_streams([("agra", state.model.eval())], [1.0]), state
