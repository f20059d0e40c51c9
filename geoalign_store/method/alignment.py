"""Pure training building blocks of SPEC §4 (no store I/O, no CLI, no training loop).

* OTCA: :func:`sinkhorn_log` (entropic OT, log domain, uniform marginals, no gradient),
  :func:`epsilon_schedule` (linear 0.2 -> 0.05 curriculum), :func:`soft_targets`.
* DAMO: :func:`distillation_loss` (bidirectional soft KL), :func:`reliable_pairs` (mutual argmax
  of the plan + similarity threshold), :func:`matching_loss` (label-smoothed CE, both directions).
* :class:`CautiousAdamW` and :func:`warmup_cosine`.

The ISMS decorrelation / orthogonality losses live in :func:`geoalign_store.method.heads.isms_losses`.
Conventions: ``S`` is the (n, m) cosine matrix satellites x drones; ``scale`` is ``exp(t)`` (a
tensor, so the learnable ``t`` gets a gradient through both DAMO losses).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sinkhorn_log", "epsilon_schedule", "soft_targets", "distillation_loss",
           "reliable_pairs", "matching_loss", "CautiousAdamW", "warmup_cosine"]


# --------------------------------------------------------------------------- OTCA
# Span of -cost/epsilon (nats) up to which the factored kernel below is used: float64 keeps
# e^-600 (> 1e-261) as a normal number, so no kernel entry a sum relies on underflows.
_FACTORED_MAX_SPAN = 600.0


@torch.no_grad()
def sinkhorn_log(cost: Tensor, epsilon: float, n_iter: int = 3) -> Tensor:
    """Entropic OT plan (n, m) between uniform marginals (rows -> 1/n, columns -> 1/m).

    Log-domain Sinkhorn on the dual potentials: with ``L = -cost / epsilon`` it alternates
    ``log u = -log n - LSE_j(L_ij + log v_j)`` and ``log v = -log m - LSE_i(L_ij + log u_i)``
    (one iteration = one row + one column update, from v = 1) and returns
    ``exp(L_ij + log u_i + log v_j)``: column marginals are exact after every iteration, rows
    converge.  Computed in float64 without gradient whatever the input dtype, returned in
    ``cost.dtype``.  Each row keeps mass >= 1/(n m) (a column update shrinks a row by at most m).

    Speed: an LSE over the matrix costs one ``exp`` of n x m numbers per half-iteration.  When the
    span of ``L`` is <= 600 (costs in [0, 2]: any epsilon >= 0.0034) the log-sum-exps are evaluated
    exactly, still on log potentials, through one row-stabilised kernel ``K = exp(L - max_j L)``
    (entries in [e^-600, 1]) and mat-vecs:  ``LSE_j(L_ij + b_j) = r_i + B + log(K exp(b - B))_i``
    and ``LSE_i(L_ij + a_i) = W + log(K^T exp(w - W))_j`` with ``w = r + a``, ``W = max w``,
    ``B = max b``; the term of the maximising index is >= e^-600, so no sum underflows to 0.
    Beyond that span it falls back to ``torch.logsumexp`` (same result, ~7x slower).
    """
    if cost.dim() != 2 or cost.shape[0] == 0 or cost.shape[1] == 0:
        raise ValueError(f"cost must be a non-empty 2-D tensor, got shape {tuple(cost.shape)}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    n, m = cost.shape
    log_k = cost.detach().to(torch.float64) / (-float(epsilon))
    if not torch.isfinite(log_k).all():
        raise ValueError("cost must be finite")
    log_a, log_b = -math.log(n), -math.log(m)
    log_v = log_k.new_zeros(m)
    r = log_k.amax(dim=1)
    if float(r.max() - log_k.min()) <= _FACTORED_MAX_SPAN:
        kernel = (log_k - r[:, None]).exp_()
        for _ in range(n_iter):
            big = log_v.max()
            log_u = log_a - r - big - torch.mv(kernel, (log_v - big).exp_()).log_()
            w = r + log_u
            big = w.max()
            log_v = log_b - big - torch.mv(kernel.T, (w - big).exp_()).log_()
    else:
        for _ in range(n_iter):
            log_u = log_a - torch.logsumexp(log_k + log_v[None, :], dim=1)
            log_v = log_b - torch.logsumexp(log_k + log_u[:, None], dim=0)
    return log_k.add_(log_u[:, None]).add_(log_v[None, :]).exp_().to(cost.dtype)


def epsilon_schedule(epoch: int, epochs: int, start: float = 0.2, end: float = 0.05) -> float:
    """Linear anneal: ``start`` at epoch 0, ``end`` at epoch ``epochs - 1`` (clamped outside).
    ``start == end`` switches the curriculum off; ``epochs <= 1`` gives ``start``."""
    if epochs <= 1:
        return float(start)
    frac = min(max(epoch / (epochs - 1), 0.0), 1.0)
    return float(start + (end - start) * frac)


def soft_targets(plan: Tensor) -> tuple[Tensor, Tensor]:
    """-> (row targets (n, m): the plan normalised per row, sat -> drone;
    column targets (m, n): the plan normalised per column and transposed, drone -> sat,
    laid out like ``S.T``).  Every row of both sums to 1 (a zero row of the plan, impossible from
    :func:`sinkhorn_log`, would stay zero rather than become NaN)."""
    plan = plan.detach()
    tiny = torch.finfo(plan.dtype).tiny
    row = plan / plan.sum(dim=1, keepdim=True).clamp_min(tiny)
    col = (plan / plan.sum(dim=0, keepdim=True).clamp_min(tiny)).T.contiguous()
    return row, col


# --------------------------------------------------------------------------- DAMO
def distillation_loss(S: Tensor, row_t: Tensor, col_t: Tensor, scale: Tensor | float) -> Tensor:
    """``1/2 [KL(row_t || softmax(scale S, dim=1)) + KL(col_t || softmax(scale S^T, dim=1))]``.

    Reduction: each KL is summed over a row's targets and averaged over that direction's rows
    ("batchmean": /n for sat -> drone, /m for drone -> sat); the two directions are then averaged.
    Zero-probability targets contribute 0 (``0 log 0 = 0``)."""
    logits = scale * S
    kl_rows = F.kl_div(F.log_softmax(logits, dim=1), row_t, reduction="batchmean")
    kl_cols = F.kl_div(F.log_softmax(logits.T, dim=1), col_t, reduction="batchmean")
    return 0.5 * (kl_rows + kl_cols)


@torch.no_grad()
def reliable_pairs(plan: Tensor, S: Tensor, threshold: float = 0.2) -> tuple[Tensor, Tensor]:
    """-> (sat_idx, drone_idx), int64: satellite i with j* = argmax_j P_ij kept when
    argmax_i P_ij* == i (mutual on the plan) and S_ij* > threshold.  Ties: first index wins."""
    n = plan.shape[0]
    rows = torch.arange(n, device=plan.device)
    j_star = plan.argmax(dim=1)
    i_star = plan.argmax(dim=0)
    keep = (i_star[j_star] == rows) & (S.detach()[rows, j_star] > threshold)
    return rows[keep], j_star[keep]


def matching_loss(S: Tensor, sat_idx: Tensor, drone_idx: Tensor, scale: Tensor | float,
                  smoothing: float = 0.15) -> Tensor:
    """Label-smoothed cross-entropy on the kept pairs, both directions, all negatives kept:
    rows ``scale S[sat_idx]`` (over all m drones) -> ``drone_idx`` and rows ``scale S.T[drone_idx]``
    (over all n satellites) -> ``sat_idx``; each a mean over the kept pairs, then the mean of the two.
    No pair kept -> ``0 * S.sum()``: exactly zero, in the graph, so backward still works."""
    if sat_idx.numel() == 0:
        return S.sum() * 0.0
    logits = scale * S
    ce_s2d = F.cross_entropy(logits[sat_idx], drone_idx, label_smoothing=smoothing)
    ce_d2s = F.cross_entropy(logits.T[drone_idx], sat_idx, label_smoothing=smoothing)
    return 0.5 * (ce_s2d + ce_d2s)


# --------------------------------------------------------------------------- optimisation
class CautiousAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias correction) with the "cautious" mask of Liang et al.
    2024 (arXiv 2411.16085, github.com/kyleliang919/C-Optim ``c_adamw.py``).

    Per parameter, after the moment updates: ``mask = (exp_avg * grad > 0)``; the Adam update
    ``exp_avg / denom`` is multiplied by ``mask * norm``.  ``mask_norm="mean"`` (default) uses
    ``norm = 1 / max(mean(mask), 1e-3)``, what the reference code does now (its original
    ``numel / (sum(mask) + 1)``, kept there as a comment, was replaced following timm);
    ``mask_norm="sum_plus_one"`` selects that original.  Both agree to O(1/numel) on large
    tensors; the original would halve every step of a scalar parameter such as the learnable
    logit scale t (1 / (1 + 1)).  Weight decay ``p *= 1 - lr wd`` is applied before the update and
    is not masked (as the reference).  ``denom = sqrt(v / bc2) + eps`` as ``torch.optim.AdamW``
    (the reference adds eps before the bias correction: an eps-level difference), so
    ``cautious=False`` reproduces ``torch.optim.AdamW`` (up to rounding).  State: ``step`` (int),
    ``exp_avg``, ``exp_avg_sq``; ``state_dict()`` round-trips (note that, as for every torch
    optimiser, it returns references to the live tensors: serialise or deep-copy it).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, cautious: bool = True,
                 mask_norm: str = "mean"):
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid CautiousAdamW hyper-parameters lr={lr} betas={betas} "
                             f"eps={eps} weight_decay={weight_decay}")
        if mask_norm not in ("mean", "sum_plus_one"):
            raise ValueError(f"mask_norm must be 'mean' or 'sum_plus_one', got {mask_norm!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      cautious=cautious, mask_norm=mask_norm))
        self._scratch_bufs: dict = {}

    def _scratch(self, p: Tensor, slot: int) -> Tensor:
        """A reusable temporary shaped like ``p`` (not optimiser state: never saved).  Reusing
        two buffers sized for the largest parameter avoids a fresh page-faulted allocation of
        every large temporary at every step (page faults: a measurable share of a CPU step)."""
        key = (slot, p.dtype, p.device)
        buf = self._scratch_bufs.get(key)
        if buf is None or buf.numel() < p.numel():
            buf = self._scratch_bufs[key] = torch.empty(p.numel(), dtype=p.dtype, device=p.device)
        return buf[:p.numel()].view_as(p)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("CautiousAdamW does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] = t = int(state["step"]) + 1

                if wd != 0:
                    p.mul_(1.0 - lr * wd)
                exp_avg.lerp_(grad, 1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                bc1, bc2_sqrt = 1.0 - beta1 ** t, math.sqrt(1.0 - beta2 ** t)
                # sqrt(v / bc2) + eps == (sqrt(v) + eps bc2_sqrt) / bc2_sqrt
                denom = torch.sqrt(exp_avg_sq, out=self._scratch(p, 0)).add_(eps * bc2_sqrt)
                step_size = lr * bc2_sqrt / bc1
                if group["cautious"]:
                    # float 0/1 mask, then reused as the masked update
                    upd = torch.mul(exp_avg, grad, out=self._scratch(p, 1)).gt_(0)
                    kept = float(upd.sum())
                    if group["mask_norm"] == "mean":
                        norm = 1.0 / max(kept / upd.numel(), 1e-3)
                    else:
                        norm = upd.numel() / (kept + 1.0)
                    upd.mul_(exp_avg)
                    p.addcdiv_(upd, denom, value=-step_size * norm)
                else:
                    p.addcdiv_(exp_avg, denom, value=-step_size)
        return loss


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, base_lr: float,
                  min_lr: float = 0.0) -> float:
    """Learning rate for 0-based ``step``: linear warm-up ``base_lr (step+1) / (warmup_steps+1)``
    for ``step < warmup_steps`` (never 0: with one step per epoch and a 1-epoch warm-up, step 0
    runs at base_lr / 2), then cosine from ``base_lr`` at ``step = warmup_steps`` towards
    ``min_lr``: ``min + (base - min) (1 + cos(pi (step - w) / (total - w))) / 2`` (as
    ``CosineAnnealingLR``: the last step, total-1, is still above min_lr); ``min_lr`` past the end."""
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
