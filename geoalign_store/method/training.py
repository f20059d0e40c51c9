"""Label-free training of the heads on cached descriptors (SPEC §4), with exact resume.

Stream 1 (AGRA): one optimiser step per epoch on every train satellite plus one drone drawn from
each drone group (a flight folder). The drone group ids are used only to group drone rows; they
are never compared with satellite labels. Pseudo-labels come from entropic OT (OTCA) on the
similarities of the shared space, and drive DAMO's soft distillation and reliable matching.

Stream 2 (ISMS): a whitening autoencoder on the pooled train rows of both views, no pairing.

Determinism: all randomness comes from torch's global generator (gate noise, dropout) and one
sampling generator, both seeded and saved in every checkpoint, so a resumed run continues the
exact same sequence of steps as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from . import alignment as al
from .heads import AGRA, ISMS, export_state_dict, isms_losses, l2n


def _stage_defaults(section: str) -> dict:
    """configs/stage/fit-heads.yaml's `section`: the one place the recipes' defaults are written
    (the paper's values; preset=improved changes some of them on top)."""
    from ..config import compose, to_plain
    return to_plain(compose("fit-heads", ["preset=paper"])[section])


class FitHeadsSection:
    """A dataclass of one section of configs/stage/fit-heads.yaml (named by SECTION), whose
    defaults are that file's: `defaults(**changes)`; `from_config` builds it from the section."""
    SECTION: ClassVar[str]

    @classmethod
    def from_config(cls, section: dict):
        return cls(**section)

    @classmethod
    def defaults(cls, **changes):
        return cls.from_config({**_stage_defaults(cls.SECTION), **changes})


@dataclass
class AgraRecipe(FitHeadsSection):
    """Stream-1 training (fields documented in configs/stage/fit-heads.yaml `agra:`; no defaults
    here: `AgraRecipe.defaults(**changes)` reads them from that file)."""
    epochs: int
    lr: float
    weight_decay: float
    warmup_epochs: int
    clip_value: float
    eps_start: float
    eps_end: float
    sinkhorn_iters: int
    scale_init: float
    distill_weight: float
    match_weight: float
    match_threshold: float
    label_smoothing: float
    recon_weight: float
    aux_weight: float
    distill: bool
    matching: bool
    moe: bool
    checkpoint_every: int
    teacher: str
    teacher_epsilon: float
    teacher_iters: int
    teacher_refresh: int
    teacher_per_flight: int
    SECTION: ClassVar[str] = "agra"


@dataclass
class IsmsRecipe(FitHeadsSection):
    """Stream-2 training (configs/stage/fit-heads.yaml `isms:`)."""
    latent_dim: int | None
    init: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    mse_weight: float
    decorrelation_weight: float
    orthogonality_weight: float
    SECTION: ClassVar[str] = "isms"


def group_index(groups: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows sorted by group, each group's first position and size (for vectorised draws)."""
    order = np.argsort(groups, kind="stable")
    _, start, count = np.unique(groups[order], return_index=True, return_counts=True)
    return torch.from_numpy(order), torch.from_numpy(start), torch.from_numpy(count)


def draw_one_per_group(index, generator: torch.Generator) -> torch.Tensor:
    order, start, count = index
    offset = (torch.rand(len(start), generator=generator, dtype=torch.float64) * count).long()
    return order[start + offset]


@dataclass
class AgraState:
    model: AGRA
    log_scale: torch.nn.Parameter
    optimizer: torch.optim.Optimizer
    sampler: torch.Generator
    epoch: int = 0
    history: list = field(default_factory=list)
    teacher: tuple | None = None   # (plan, cosine) of agra.teacher=isms, saved in checkpoints


def forked_rng(device: torch.device):
    """torch.random.fork_rng over the CPU's generator and, on a GPU, that device's: the code
    inside draws from its own seeds and leaves the caller's random state as it was."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def new_agra_state(dim: int, recipe: AgraRecipe, seed: int, device=None) -> AgraState:
    """Initialised on the CPU whatever the device (the same initial weights everywhere), then
    moved; the sampling generator stays on the CPU, so the drawn drones never depend on it."""
    torch.manual_seed(seed)
    model = AGRA(dim).to(device or "cpu")
    log_scale = torch.nn.Parameter(torch.tensor(float(np.log(recipe.scale_init)), device=device or "cpu"))
    params = [p for p in model.parameters() if p.requires_grad] + [log_scale]
    optimizer = al.CautiousAdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    sampler = torch.Generator().manual_seed(seed + 1)
    return AgraState(model, log_scale, optimizer, sampler)


def agra_losses(state: AgraState, sat: torch.Tensor, drone: torch.Tensor, epsilon: float,
                recipe: AgraRecipe, teacher: tuple | None = None) -> dict[str, torch.Tensor]:
    """`teacher` (plan, cosine) over (satellites, the drones' groups) replaces the per-step plan."""
    model = state.model
    z_sat = model.encode_satellite(sat)
    if recipe.moe:
        z_drone, aux = model.encode_drone(drone)
    else:
        z_drone, aux = model.encode_satellite(drone), sat.new_zeros(())
    S = l2n(z_sat) @ l2n(z_drone).T
    if teacher is None:
        plan, plan_sim = al.sinkhorn_log(1.0 - S.detach(), epsilon, recipe.sinkhorn_iters), S.detach()
    else:
        plan, plan_sim = teacher
    scale = state.log_scale.exp()
    parts = {"recon": (F.l1_loss(model.decode(z_sat), sat) + F.l1_loss(model.decode(z_drone), drone)),
             "aux": aux}
    if recipe.distill:
        parts["distill"] = al.distillation_loss(S, *al.soft_targets(plan), scale)
    if recipe.matching:
        pairs = al.reliable_pairs(plan, plan_sim, recipe.match_threshold)
        parts["match"] = al.matching_loss(S, *pairs, scale, recipe.label_smoothing)
        parts["pairs"] = torch.tensor(float(len(pairs[0])))
    weights = {"recon": recipe.recon_weight, "aux": recipe.aux_weight,
               "distill": recipe.distill_weight, "match": recipe.match_weight}
    parts["total"] = sum(weights[k] * v for k, v in parts.items() if k in weights)
    return parts


def fit_agra(state: AgraState, sat: torch.Tensor, drone: torch.Tensor, groups: np.ndarray,
             recipe: AgraRecipe, on_epoch: Callable[[AgraState, dict], None] | None = None,
             teacher=None) -> AgraState:
    """Train from `state.epoch` to `recipe.epochs`; `on_epoch` logs and checkpoints. `teacher`:
    a :class:`geoalign_store.method.teacher.FlightTeacher` (None: the paper's per-step plan); its plan
    is rebuilt every `recipe.teacher_refresh` epochs and kept in `state.teacher`."""
    device = state.log_scale.device
    sat, drone = sat.to(device), drone.to(device)
    if teacher is not None and state.teacher is None:
        state.teacher = teacher.initial()
    state.teacher = _on(device, state.teacher)
    index = group_index(groups)
    state.model.train()
    for epoch in range(state.epoch, recipe.epochs):
        if teacher is not None and recipe.teacher_refresh and epoch and epoch % recipe.teacher_refresh == 0:
            state.teacher = _on(device, teacher.refresh(state.model))
        lr = al.warmup_cosine(epoch, recipe.epochs, recipe.warmup_epochs, recipe.lr)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        picked = draw_one_per_group(index, state.sampler).to(device)
        epsilon = al.epsilon_schedule(epoch, recipe.epochs, recipe.eps_start, recipe.eps_end)
        parts = agra_losses(state, sat, drone[picked], epsilon, recipe, state.teacher)
        state.optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        torch.nn.utils.clip_grad_value_(state.model.parameters(), recipe.clip_value)
        state.optimizer.step()
        state.epoch = epoch + 1
        record = {"epoch": epoch, "lr": lr, "epsilon": epsilon, "scale": float(state.log_scale.detach().exp()),
                  **{k: float(v.detach()) for k, v in parts.items()}}
        state.history.append(record)
        if on_epoch:
            on_epoch(state, record)
    state.model.eval()
    return state


def _on(device: torch.device, tensors: tuple | None) -> tuple | None:
    return None if tensors is None else tuple(t.to(device) for t in tensors)


def fit_isms(x: torch.Tensor, latent_dim: int, recipe: IsmsRecipe, seed: int,
             on_epoch: Callable[[int, dict], None] | None = None, device=None) -> ISMS:
    """Whitening autoencoder on pooled rows (satellite and drone, no pairing). Initialised and
    shuffled on the CPU (the same weights and batches on every device), trained on `device`."""
    torch.manual_seed(seed)
    model = ISMS(x.shape[1], latent_dim)
    if device is not None:
        model, x = model.to(device), x.to(device)
    if recipe.init == "pca":
        _pca_init(model, x)
    elif recipe.init != "orthogonal":
        raise ValueError(f"isms.init must be orthogonal or pca, got {recipe.init!r}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    generator = torch.Generator().manual_seed(seed + 2)
    batch = min(recipe.batch_size, x.shape[0])
    model.train()
    for epoch in range(recipe.epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        sums: dict[str, float] = {}
        for start in range(0, x.shape[0] - batch + 1, batch):  # full batches: BatchNorm needs >1 row
            xb = x[order[start:start + batch].to(x.device)]
            latent, recon = model(xb)
            parts = isms_losses(xb, latent, recon, model)
            total = (recipe.mse_weight * parts["mse"] + recipe.decorrelation_weight * parts["decorrelation"]
                     + recipe.orthogonality_weight * parts["orthogonality"])
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            for k, v in {**parts, "total": total}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        if on_epoch:
            on_epoch(epoch, sums)
    return model.eval()


def _pca_init(model: ISMS, x: torch.Tensor) -> None:
    """Encoder rows = the top principal axes of the pooled rows (decoder = their transpose):
    label-free, and the subspace the reconstruction loss converges to anyway, reached at once."""
    mean = x.mean(0)
    _, sv, vt = torch.linalg.svd(x - mean, full_matrices=False)
    axes = vt[: model.latent_dim]
    with torch.no_grad():
        model.encoder.weight.copy_(axes)
        model.decoder.weight.copy_(axes.T)
        model.decoder.bias.copy_(mean)
        # BatchNorm starts as the exact PCA whitening (with isms.epochs=0 it stays so)
        model.bn_whiten.running_mean.copy_(axes @ mean)
        model.bn_whiten.running_var.copy_(sv[: model.latent_dim] ** 2 / len(x))


__all__ = ["AgraRecipe", "IsmsRecipe", "AgraState", "new_agra_state", "fit_agra", "fit_isms",
           "agra_losses", "draw_one_per_group", "group_index", "export_state_dict"]
