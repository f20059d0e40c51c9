"""Seconds per AGRA training step at University-1652 size: geoalign's AGRA vs the release's design.

One step = what a fit-heads epoch does with the module: encode 701 satellite + 700 drone
descriptors (C = 1280), cosine matrix, a bidirectional soft-CE on it, L1 reconstruction of both
views through the decoder, 0.01 x load-balance aux, backward, AdamW step (fp32, CPU).
A third variant adds the release's cycle pass (enc(dec(sat)) through the drone MoE, enc(dec(drone))
as satellite): ``run_train`` of the release computes it although its losses never use it.

The reference (:class:`ReleaseStyleAGRA`) is a plain re-run of the release's design: same
parameter names, ``nn.MultiheadAttention`` in each expert, and the MoE looping over top-k slots x
experts with boolean masks in Python.  Both models get the same weights.

    python benchmarks/fit_modules.py [--steps 5] [--threads 2] [--optim fused|foreach|plain]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from geoalign_store.method import AGRA, LayerScale, RMSNorm


class _RefFFN(nn.Module):
    def __init__(self, d, hidden, p):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(p), nn.Linear(hidden, d), nn.Dropout(p))

    def forward(self, x):
        return self.net(x)


class _RefExpert(nn.Module):
    def __init__(self, width, n_chunks, heads, p):
        super().__init__()
        self.n_chunks, d = n_chunks, width // n_chunks
        self.pos_embed = nn.Parameter(torch.zeros(1, n_chunks, d))
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=p, batch_first=True)
        self.ls1, self.ls2 = LayerScale(d), LayerScale(d)
        self.ffn = _RefFFN(d, 4 * d, p)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        b, w = x.shape
        s = x.view(b, self.n_chunks, -1) + self.pos_embed
        y = self.norm1(s)
        s = s + self.ls1(self.attn(y, y, y)[0])
        s = s + self.ls2(self.ffn(self.norm2(s)))
        return self.proj(s.reshape(b, w))


class _RefMoE(nn.Module):
    def __init__(self, width, n_experts=4, k=2, n_chunks=20, heads=4, p=0.1, noise=0.25):
        super().__init__()
        self.n_experts, self.k, self.noise, self.width = n_experts, k, noise, width
        self.gate = nn.Sequential(nn.Linear(width, 4 * n_experts), nn.Tanh(), nn.Linear(4 * n_experts, n_experts))
        self.experts = nn.ModuleList(_RefExpert(width, n_chunks, heads, p) for _ in range(n_experts))

    def forward(self, x):
        b = x.shape[0]
        logits = self.gate(x)
        if self.training and self.noise > 0:
            logits = logits + torch.randn_like(logits) * self.noise
        scores = F.softmax(logits, dim=-1)
        tw, ti = torch.topk(scores, self.k, dim=-1)
        tw = tw / (tw.sum(-1, keepdim=True) + 1e-6)
        load = torch.zeros_like(scores).scatter_(1, ti, 1.0).sum(0)
        aux = self.n_experts * (scores.sum(0) * load).sum() / (b * b)
        out = torch.zeros(b, self.width)
        for i in range(self.k):
            idx, w = ti[:, i], tw[:, i].unsqueeze(1)
            for e in range(self.n_experts):
                m = idx == e
                if m.sum() > 0:
                    out[m] += w[m] * self.experts[e](x[m])
        return out, aux, load


class ReleaseStyleAGRA(nn.Module):
    """The release's design with its parameter names (loop over routing masks)."""

    def __init__(self, dim, **kw):
        super().__init__()
        self.shared_enc = nn.Sequential(nn.Linear(dim, 2 * dim), nn.LayerNorm(2 * dim))
        self.moe_layer = _RefMoE(2 * dim, **kw)
        self.dec1 = nn.Sequential(nn.Linear(2 * dim, dim), nn.BatchNorm1d(dim))
        self.dec2 = self.dec1

    def encode_satellite(self, x):
        return self.shared_enc(x)

    def encode_drone(self, x):
        base = self.shared_enc(x)
        delta, aux, _ = self.moe_layer(base)
        return base + delta, aux

    def decode(self, z):
        return self.dec1(z)


def make_step(model, xs, xd, cycle=False, optim="fused"):
    """One training step; ``cycle`` adds the release's cycle pass (its losses do not use it)."""
    kw = {"fused": True} if optim == "fused" else {"foreach": optim == "foreach"}
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-2, **kw)
    scale = torch.tensor(14.28)

    def step():
        za = model.encode_satellite(xs)
        zb, aux = model.encode_drone(xd)
        s = F.normalize(za, dim=-1) @ F.normalize(zb, dim=-1).T * scale
        with torch.no_grad():  # stand-in for the OT soft targets
            tr, tc = s.softmax(1), s.T.softmax(1)
        loss = 0.5 * (F.cross_entropy(s, tr) + F.cross_entropy(s.T, tc))
        loss = loss + F.l1_loss(model.decode(za), xs) + F.l1_loss(model.decode(zb), xd) + 0.01 * aux
        if cycle:  # release run_train: enc(dec(sat)) through the drone MoE, enc(dec(drone)) as sat
            zab, _ = model.encode_drone(model.decode(za))
            zba = model.encode_satellite(model.decode(zb))
            loss = loss + 0.0 * (model.decode(zab).sum() + model.decode(zba).sum())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 100.0)
        opt.step()
        return loss.item()

    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--n-sat", type=int, default=701)
    ap.add_argument("--n-drone", type=int, default=700)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant (interleaved)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--optim", choices=["fused", "foreach", "plain"], default="fused",
                    help="torch AdamW implementation, the same for every variant")
    ap.add_argument("--no-cycle-variant", action="store_true", help="skip the release-with-cycle variant")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(42)
    xs, xd = torch.randn(a.n_sat, a.dim), torch.randn(a.n_drone, a.dim)
    ours = AGRA(a.dim).train()
    with torch.no_grad():  # non-zero expert outputs (proj is zero at init): same work either way
        for e in ours.moe_layer.experts:
            e.proj.weight.normal_(0, 0.01)
    ref = ReleaseStyleAGRA(a.dim).train()
    ref.load_state_dict(ours.state_dict())
    ref2 = ReleaseStyleAGRA(a.dim).train()
    ref2.load_state_dict(ours.state_dict())
    variants = {
        "geoalign AGRA (routed rows, batched attention)": make_step(ours, xs, xd, False, a.optim),
        "release design (mask loops, nn.MHA), same step": make_step(ref, xs, xd, False, a.optim),
    }
    if not a.no_cycle_variant:
        variants["release design + its unused cycle pass"] = make_step(ref2, xs, xd, True, a.optim)
    print(f"AGRA training step: C={a.dim}, {a.n_sat} sat + {a.n_drone} drone rows, fp32, "
          f"{torch.get_num_threads()} threads, AdamW({a.optim}), load avg {os.getloadavg()[0]:.1f}")
    for f in variants.values():
        for _ in range(a.warmup):
            f()
    wall = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    for _ in range(a.steps):  # interleaved, so a busy machine hurts every variant alike
        for k, f in variants.items():
            t, c = time.perf_counter(), time.process_time()
            f()
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    med = {k: statistics.median(v) for k, v in wall.items()}
    first = next(iter(med))
    for k in variants:
        print(f"  {k:48s} {med[k]:6.3f} s/step wall (min {min(wall[k]):.3f}, cpu {statistics.median(cpu[k]):.3f})"
              f"  -> {a.epochs} epochs ~ {med[k] * a.epochs / 60:.1f} min"
              + ("" if k == first else f"   x{med[k] / med[first]:.2f} vs geoalign"))
    print(f"  load avg at end {os.getloadavg()[0]:.1f} (numbers are only comparable on an idle machine)")


if __name__ == "__main__":
    main()
