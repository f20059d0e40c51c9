"""OTCA / DAMO building blocks, CautiousAdamW and the schedules (geoalign_store.method.alignment)."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F

from geoalign_store.method import (CautiousAdamW, distillation_loss, epsilon_schedule,
                                   matching_loss, reliable_pairs, sinkhorn_log, soft_targets,
                                   warmup_cosine)


def _cost(n=40, m=30, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(n, 16, generator=g, dtype=dtype), dim=1)
    b = F.normalize(torch.randn(m, 16, generator=g, dtype=dtype), dim=1)
    return 1.0 - a @ b.T  # cosine cost in [0, 2]


def _naive_sinkhorn(cost, eps, n_iter):
    n, m = cost.shape
    k = torch.exp(-cost / eps)
    v = torch.ones(m, dtype=cost.dtype)
    for _ in range(n_iter):
        u = (1.0 / n) / (k @ v)
        v = (1.0 / m) / (k.T @ u)
    return u[:, None] * k * v[None, :]


def _lse_sinkhorn(cost, eps, n_iter):
    """Textbook log-domain Sinkhorn (torch.logsumexp on the full matrix), float64."""
    n, m = cost.shape
    log_k = -cost.double() / eps
    log_v = torch.zeros(m, dtype=torch.float64)
    for _ in range(n_iter):
        log_u = -math.log(n) - torch.logsumexp(log_k + log_v[None, :], dim=1)
        log_v = -math.log(m) - torch.logsumexp(log_k + log_u[:, None], dim=0)
    return (log_k + log_u[:, None] + log_v[None, :]).exp()


# --------------------------------------------------------------------------- Sinkhorn
def test_sinkhorn_marginals_converge_and_three_iterations_are_close():
    cost = _cost()
    n, m = cost.shape
    plan = sinkhorn_log(cost, 0.1, n_iter=2000)
    assert torch.allclose(plan.sum(1) * n, torch.ones(n, dtype=plan.dtype), atol=1e-4)
    assert torch.allclose(plan.sum(0) * m, torch.ones(m, dtype=plan.dtype), atol=1e-4)
    plan3 = sinkhorn_log(cost, 0.2, n_iter=3)
    assert torch.allclose(plan3.sum(0) * m, torch.ones(m, dtype=plan.dtype), atol=1e-9)  # exact
    assert (plan3.sum(1) * n - 1).abs().max() < 0.1  # rows already close
    assert abs(plan3.sum().item() - 1.0) < 1e-9


def test_sinkhorn_matches_naive_exp_domain_when_stable():
    cost = _cost(seed=1)
    for n_iter in (1, 3, 20):
        assert torch.allclose(sinkhorn_log(cost, 0.2, n_iter), _naive_sinkhorn(cost, 0.2, n_iter),
                              rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sinkhorn_log_domain_stable_at_small_epsilon(dtype):
    cost = _cost(70, 60, seed=2, dtype=dtype)
    cost[0] = 2.0  # a row at the maximal cost everywhere
    cost[1, :] = 2.0
    cost[1, 5] = 0.0  # ... and one competing with others for a single column
    cost[2:, 5] = 0.0
    with torch.no_grad():
        naive = _naive_sinkhorn(cost.float(), 0.01, 3)
    assert not torch.isfinite(naive).all()  # exp-domain float32 breaks down here (exp(-200) = 0)
    plan = sinkhorn_log(cost.requires_grad_(), 0.01, n_iter=3)
    assert plan.dtype == dtype and not plan.requires_grad
    assert torch.isfinite(plan).all() and (plan >= 0).all()
    assert (plan.sum(1) > 0).all()  # no row underflows to zero
    assert torch.allclose(plan.sum(0).double() * 60, torch.ones(60, dtype=torch.float64), atol=1e-5)
    ref = sinkhorn_log(cost.detach().double(), 0.01, n_iter=3)
    assert torch.allclose(plan.double(), ref, rtol=1e-5, atol=1e-12)
    rows, cols = soft_targets(plan)
    assert torch.isfinite(rows).all() and torch.isfinite(cols).all()


@pytest.mark.parametrize("eps", [0.2, 0.05, 0.01, 0.001])  # 0.001: span 2000 > 600, LSE fallback
def test_sinkhorn_matches_textbook_logsumexp(eps):
    cost = _cost(50, 45, seed=4)
    cost[3] = 2.0
    for n_iter in (1, 3, 10):
        ref = _lse_sinkhorn(cost, eps, n_iter)
        assert torch.allclose(sinkhorn_log(cost, eps, n_iter), ref, rtol=1e-9, atol=1e-300)
    plan = sinkhorn_log(cost.float(), eps)
    assert torch.isfinite(plan).all() and (plan.sum(1) > 0).all()


def test_sinkhorn_rejects_bad_arguments():
    with pytest.raises(ValueError):
        sinkhorn_log(torch.zeros(3), 0.1)
    with pytest.raises(ValueError):
        sinkhorn_log(torch.zeros(3, 3), 0.0)
    with pytest.raises(ValueError):
        sinkhorn_log(torch.full((3, 3), float("nan")), 0.1)


# --------------------------------------------------------------------------- schedules
def test_epsilon_schedule():
    assert epsilon_schedule(0, 300) == pytest.approx(0.2)
    assert epsilon_schedule(299, 300) == pytest.approx(0.05)
    assert epsilon_schedule(0, 3) > epsilon_schedule(1, 3) > epsilon_schedule(2, 3)
    assert epsilon_schedule(1, 3) == pytest.approx(0.125)
    assert epsilon_schedule(500, 300) == pytest.approx(0.05)
    assert all(epsilon_schedule(e, 300, 0.1, 0.1) == pytest.approx(0.1) for e in (0, 150, 299))
    assert epsilon_schedule(0, 1) == pytest.approx(0.2)


def test_warmup_cosine_shape():
    base, total = 2e-4, 300
    lrs = [warmup_cosine(s, total, 1, base) for s in range(total)]
    assert lrs[0] == pytest.approx(base / 2)  # one warm-up step
    assert lrs[1] == pytest.approx(base)  # cosine starts at base_lr
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))  # then non-increasing
    assert 0 < lrs[-1] < 1e-8  # approaches min_lr without reaching it at the last step
    mid = 1 + (total - 1) // 2
    assert warmup_cosine(1 + (total - 1) / 2, total, 1, base) == pytest.approx(base / 2)
    assert lrs[mid] == pytest.approx(base / 2, rel=0.02)
    assert warmup_cosine(total + 5, total, 1, base, min_lr=1e-6) == pytest.approx(1e-6)
    warm = [warmup_cosine(s, 100, 4, 1.0) for s in range(5)]
    assert warm == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


# --------------------------------------------------------------------------- DAMO
def test_soft_targets_rows_sum_to_one_and_layout():
    plan = sinkhorn_log(_cost(), 0.05)
    rows, cols = soft_targets(plan)
    assert rows.shape == (40, 30) and cols.shape == (30, 40)
    assert torch.allclose(rows.sum(1), torch.ones(40, dtype=rows.dtype))
    assert torch.allclose(cols.sum(1), torch.ones(30, dtype=cols.dtype))
    assert torch.allclose(cols.T * plan.sum(0, keepdim=True), plan)


def test_distillation_loss_hand_computed_and_zero_at_softmax():
    S = torch.tensor([[0.9, 0.1], [0.2, 0.7], [0.0, 0.5]])
    scale = torch.tensor(2.0, requires_grad=True)
    row_t = torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.0, 1.0]])
    col_t = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.6, 0.3]])
    q_r = torch.softmax(2.0 * S, 1)
    q_c = torch.softmax(2.0 * S.T, 1)

    def kl(p, q):  # sum_j p log(p/q), 0 log 0 = 0, then mean over rows
        return sum(float(pi) * math.log(float(pi) / float(qi))
                   for pr, qr in zip(p, q) for pi, qi in zip(pr, qr) if pi > 0) / len(p)
    expected = 0.5 * (kl(row_t, q_r) + kl(col_t, q_c))
    loss = distillation_loss(S, row_t, col_t, scale)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert scale.grad is not None and torch.isfinite(scale.grad)
    zero = distillation_loss(S, q_r, q_c, torch.tensor(2.0))
    assert abs(zero.item()) < 1e-6


def test_reliable_pairs_mutual_and_threshold():
    plan = torch.tensor([[0.50, 0.10, 0.05, 0.00],   # 0 -> 0, mutual, S high: kept
                         [0.10, 0.05, 0.40, 0.10],   # 1 -> 2, but column 2 prefers 2: dropped
                         [0.00, 0.10, 0.45, 0.20],   # 2 -> 2, mutual, S high: kept
                         [0.05, 0.30, 0.00, 0.10],   # 3 -> 1, mutual, S below threshold: dropped
                         [0.00, 0.00, 0.10, 0.25]])  # 4 -> 3, mutual, S high: kept
    S = torch.full((5, 4), 0.5)
    S[3, 1] = 0.15
    sat, drone = reliable_pairs(plan, S, threshold=0.2)
    assert sat.tolist() == [0, 2, 4] and drone.tolist() == [0, 2, 3]
    assert sat.dtype == drone.dtype == torch.int64
    sat, drone = reliable_pairs(plan, S, threshold=0.1)
    assert sat.tolist() == [0, 2, 3, 4] and drone.tolist() == [0, 2, 1, 3]
    assert reliable_pairs(plan, S, threshold=0.6)[0].numel() == 0


def test_matching_loss_zero_with_grad_when_empty():
    S = torch.randn(5, 4, requires_grad=True)
    scale = torch.tensor(14.28, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.long)
    loss = matching_loss(S, empty, empty, scale)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(S.grad, torch.zeros_like(S))


def test_matching_loss_equals_cross_entropy():
    g = torch.Generator().manual_seed(3)
    S = torch.randn(5, 4, generator=g).requires_grad_()
    scale = torch.tensor(3.0, requires_grad=True)
    sat, drone = torch.tensor([0, 2, 4]), torch.tensor([1, 0, 3])
    loss = matching_loss(S, sat, drone, scale, smoothing=0.15)
    logits = 3.0 * S.detach()
    expected = 0.5 * (F.cross_entropy(logits[sat], drone, label_smoothing=0.15)
                      + F.cross_entropy(logits.T[drone], sat, label_smoothing=0.15))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # by hand for one direction, no smoothing: -log softmax(row)[target]
    one = matching_loss(S, sat[:1], drone[:1], scale, smoothing=0.0)
    by_hand = 0.5 * (-torch.log_softmax(logits[0], 0)[1] - torch.log_softmax(logits[:, 1], 0)[0])
    assert one.item() == pytest.approx(by_hand.item(), rel=1e-6)
    loss.backward()
    assert S.grad.abs().sum() > 0 and scale.grad is not None


# --------------------------------------------------------------------------- CautiousAdamW
def test_cautious_mask_on_constructed_example():
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    for mask_norm, norm in (("mean", 1 / 0.5), ("sum_plus_one", 4 / (2 + 1))):
        for wd in (0.0, 0.1):
            p = torch.nn.Parameter(torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=torch.float64))
            opt = CautiousAdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, mask_norm=mask_norm)
            g1 = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
            g2 = torch.tensor([1.0, -0.5, 1.0, -0.5], dtype=torch.float64)
            p.grad = g1.clone()
            opt.step()  # step 1: exp_avg = 0.1 g1 agrees with g1 everywhere: plain AdamW step
            after1 = p.detach().clone()
            expected1 = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=torch.float64) * (1 - lr * wd) - lr
            if mask_norm == "mean":
                assert torch.allclose(after1, expected1, atol=1e-6)
            p.grad = g2.clone()
            opt.step()  # step 2: exp_avg = 0.09 g1 + 0.1 g2 = [0.19, 0.04, 0.19, 0.04] vs g2 signs
            m = 0.9 * 0.1 * g1 + 0.1 * g2
            v = 0.999 * 0.001 * g1 ** 2 + 0.001 * g2 ** 2
            upd = (m / (1 - b1 ** 2)) / ((v / (1 - b2 ** 2)).sqrt() + eps)
            mask = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
            expected2 = after1 * (1 - lr * wd) - lr * upd * mask * norm
            assert torch.allclose(p.detach(), expected2, atol=1e-12)
            # masked coordinates moved by weight decay only
            assert torch.allclose(p.detach()[[1, 3]], after1[[1, 3]] * (1 - lr * wd), atol=1e-15)


def test_cautious_off_matches_torch_adamw():
    torch.manual_seed(0)
    a = torch.nn.Linear(6, 3)
    b = copy.deepcopy(a)
    oa = CautiousAdamW(a.parameters(), lr=1e-2, weight_decay=1e-2, cautious=False)
    ob = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=1e-2)
    x = torch.randn(16, 6)
    for _ in range(10):
        for mod, opt in ((a, oa), (b, ob)):
            opt.zero_grad()
            mod(x).pow(2).sum().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, rtol=1e-5, atol=1e-7)


def _train(model, opt, x, steps):
    for _ in range(steps):
        opt.zero_grad()
        (model(x) - 1.0).pow(2).mean().backward()
        opt.step()


def test_cautious_state_dict_round_trip():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    x = torch.randn(32, 5)
    opt = CautiousAdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    _train(model, opt, x, 5)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    resumed.load_state_dict(saved["model"])
    opt2 = CautiousAdamW(resumed.parameters(), lr=0.5, weight_decay=0.0)  # overwritten by load
    opt2.load_state_dict(saved["opt"])
    assert opt2.param_groups[0]["lr"] == 1e-2 and opt2.state[next(resumed.parameters())]["step"] == 5
    _train(model, opt, x, 7)
    _train(resumed, opt2, x, 7)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_cautious_reduces_quadratic():
    torch.manual_seed(2)
    A = torch.randn(20, 10)
    target = torch.randn(20)
    w = torch.nn.Parameter(torch.zeros(10))
    opt = CautiousAdamW([w], lr=0.05, weight_decay=1e-2)

    def loss():
        return (A @ w - target).pow(2).mean()
    first = loss().item()
    for _ in range(300):
        opt.zero_grad()
        l = loss()
        l.backward()
        opt.step()
    best = torch.linalg.lstsq(A, target[:, None]).solution[:, 0]
    floor = (A @ best - target).pow(2).mean().item()
    assert loss().item() < floor + 0.05 * (first - floor)
