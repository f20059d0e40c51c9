"""The two light heads of SPEC §4 (modules only: no training loop, no store I/O).

* :class:`AGRA` - stream 1: shared encoder Linear(C->2C)+LayerNorm, a drone-only mixture of
  4 transformer experts (noisy top-2 gate) added as a residual, decoder Linear(2C->C)+BatchNorm1d.
* :class:`ISMS` - stream 2: orthogonal-init encoder, BatchNorm whitening, decoder.
* :func:`fuse` - GeoAlign* fusion of the two streams.
* the paper's published weights (``300_param.t``, ``isms_model_26_28.pth``) are read into these
  modules by release_weights.py.

State-dict key names are exactly the release's (SPEC §4), so ``AGRA(1280).state_dict()`` has the
same keys and shapes as ``300_param.t``, ``dec2.*`` included (the decoder is one module registered
twice).  Note: safetensors refuses aliased tensors, so write :func:`export_state_dict` (which drops
the ``dec2.*`` aliases); every loader accepts a state dict with or without them.

Speed: the release runs each expert inside a Python loop over top-k slots x experts with boolean
masks and ``nn.MultiheadAttention``.  Here each expert runs once, on exactly the rows routed to it
(``index_select`` in, ``index_add_`` out), with batched attention over all its rows; the parameters
keep ``nn.MultiheadAttention``'s names and layout, and the arithmetic is the same (tests/test_heads.py
checks outputs and gradients against a loop-over-masks reference).  Both designs do the same FLOPs
(each row runs through exactly top_k experts), dominated by the four 2C x 2C ``proj`` matmuls, so
the module itself is only ~1.1x faster on CPU; see benchmarks/fit_modules.py for where a fit-heads
step's time goes (the release's unused cycle pass and a per-tensor AdamW cost far more).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AGRA", "ISMS", "MoELayer", "TransformerExpert", "RMSNorm", "LayerScale",
    "isms_losses", "fuse", "l2n", "export_state_dict", "agra_dim_error",
]

SATELLITE_VIEWS = ("satellite", "sat")
DRONE_VIEWS = ("drone", "dro")


def l2n(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


# --------------------------------------------------------------------------- building blocks
class RMSNorm(nn.Module):
    """The release's RMSNorm: ``x / (||x|| * d^-1/2 + eps) * g`` (eps outside the root)."""

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.scale, self.eps = dim ** -0.5, eps
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) * self.scale + self.eps) * self.g


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float = 1e-4):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout as ``F.dropout``: the scaled mask is built in place on one ``rand_like``
    buffer, then one multiply. On CPU F.dropout's ``bernoulli_`` draw plus its multiplies cost
    ~1.4x as much (~14% of a training step at University-1652 size)."""
    if not training or p == 0.0:
        return x
    return x * torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same repr, no parameters) drawing its mask with :func:`dropout`."""

    def forward(self, x):
        return dropout(x, self.p, self.training)


class _FFN(nn.Module):
    """``net``: Linear(d->4d), ReLU, Dropout, Linear(4d->d), Dropout (keys ffn.net.0 / ffn.net.3)."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), Dropout(dropout),
                                 nn.Linear(hidden, dim), Dropout(dropout))

    def forward(self, x):
        return self.net(x)


class _SelfAttention(nn.Module):
    """Self-attention with ``nn.MultiheadAttention``'s parameters (in_proj_weight, in_proj_bias,
    out_proj) and initialisation; batched over all sequences at once (SDPA without dropout)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x):  # x: (N, L, d)
        n, length, d = x.shape
        h = self.heads
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(n, length, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        if self.training and self.dropout > 0:
            # explicit math: on CPU, SDPA with dropout takes its math path anyway, plus -inf checks
            att = torch.matmul(q * (d // h) ** -0.5, k.transpose(-1, -2)).softmax(dim=-1)
            a = torch.matmul(dropout(att, self.dropout, True), v)
        else:
            a = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(a.transpose(1, 2).reshape(n, length, d))


class TransformerExpert(nn.Module):
    """[vector -> n_chunks tokens] + pos_embed -> pre-norm block -> flatten -> proj (zero init)."""

    def __init__(self, width: int, n_chunks: int, heads: int, dropout: float, layerscale_init: float):
        super().__init__()
        self.n_chunks, self.chunk = n_chunks, width // n_chunks
        d = self.chunk
        self.pos_embed = nn.Parameter(torch.zeros(1, n_chunks, d))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.norm1 = RMSNorm(d)
        self.attn = _SelfAttention(d, heads, dropout)
        self.ls1 = LayerScale(d, layerscale_init)
        self.norm2 = RMSNorm(d)
        self.ffn = _FFN(d, 4 * d, dropout)
        self.ls2 = LayerScale(d, layerscale_init)
        self.proj = nn.Linear(width, width)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):  # x: (N, width)
        n = x.shape[0]
        s = x.view(n, self.n_chunks, self.chunk) + self.pos_embed
        s = torch.addcmul(s, self.attn(self.norm1(s)), self.ls1.gamma)  # s + LayerScale(attn)
        s = torch.addcmul(s, self.ffn(self.norm2(s)), self.ls2.gamma)   # s + LayerScale(ffn)
        return self.proj(s.reshape(n, -1))


class MoELayer(nn.Module):
    """Gate Linear(W->4E)-Tanh-Linear(4E->E), softmax (Gaussian noise of ``noise_std`` on the
    logits in training), top-k renormalised as the release does (``w / (sum w + 1e-6)``).

    ``forward(x) -> (delta, aux_loss, load)``.  ``aux_loss`` is the release's load-balancing loss
    ``E * sum_e importance_e * load_e / B^2`` (importance = summed softmax scores, load = number of
    rows whose top-k holds e; = k when perfectly balanced, gradient through importance only); it is
    computed in eval mode too (the release returns 0 there).  ``load`` is a float tensor (E,).
    """

    def __init__(self, width: int, n_experts: int = 4, top_k: int = 2, n_chunks: int = 20,
                 n_attn_heads: int = 4, noise_std: float = 0.25, dropout: float = 0.1,
                 layerscale_init: float = 1e-4):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k={top_k} must be in [1, n_experts={n_experts}]")
        self.n_experts, self.top_k, self.noise_std = n_experts, top_k, noise_std
        self.gate = nn.Sequential(nn.Linear(width, 4 * n_experts), nn.Tanh(),
                                  nn.Linear(4 * n_experts, n_experts))
        self.experts = nn.ModuleList(
            TransformerExpert(width, n_chunks, n_attn_heads, dropout, layerscale_init)
            for _ in range(n_experts))

    def route(self, x):
        """-> (scores (B,E) softmax, top-k indices (B,k), renormalised top-k weights (B,k))."""
        logits = self.gate(x)
        if self.training and self.noise_std > 0:
            logits = logits + torch.randn_like(logits) * self.noise_std
        scores = logits.softmax(dim=-1)
        w, idx = scores.topk(self.top_k, dim=-1)
        return scores, idx, w / (w.sum(dim=-1, keepdim=True) + 1e-6)

    def forward(self, x):
        b = x.shape[0]
        scores, idx, w = self.route(x)
        load = torch.zeros_like(scores).scatter_(1, idx, 1.0).sum(0)
        aux = self.n_experts * (scores.sum(0) * load).sum() / max(b, 1) ** 2
        delta = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows, slot = (idx == e).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            out = expert(x.index_select(0, rows)) * w[rows, slot].unsqueeze(1)
            delta.index_add_(0, rows, out)
        return delta, aux, load


def agra_dim_error(dim: int, n_chunks: int = 20, n_attn_heads: int = 4) -> str | None:
    """None if AGRA supports descriptor dim C, else a message saying which dims work."""
    width = 2 * dim
    if dim > 0 and width % n_chunks == 0 and (width // n_chunks) % n_attn_heads == 0:
        return None
    m = n_chunks * n_attn_heads // math.gcd(n_chunks * n_attn_heads, 2)
    lo, hi = max(m, dim // m * m), (dim // m + 1) * m
    return (f"AGRA cannot use descriptor dim C={dim}: 2C={width} must split into n_chunks={n_chunks} "
            f"tokens whose size is divisible by n_attn_heads={n_attn_heads}, i.e. C must be a "
            f"multiple of {m} (nearest: {lo}, {hi}); or change n_chunks/n_attn_heads")


# --------------------------------------------------------------------------- AGRA
class AGRA(nn.Module):
    """Asymmetric Geometry-Rectified Adapter (stream 1), release key names."""

    def __init__(self, dim: int, n_experts: int = 4, top_k: int = 2, n_chunks: int = 20,
                 n_attn_heads: int = 4, noise_std: float = 0.25, dropout: float = 0.1,
                 layerscale_init: float = 1e-4):
        super().__init__()
        err = agra_dim_error(dim, n_chunks, n_attn_heads)
        if err:
            raise ValueError(err)
        self.dim, self.width = dim, 2 * dim
        self.config = dict(dim=dim, n_experts=n_experts, top_k=top_k, n_chunks=n_chunks,
                           n_attn_heads=n_attn_heads, noise_std=noise_std, dropout=dropout,
                           layerscale_init=layerscale_init)
        self.shared_enc = nn.Sequential(nn.Linear(dim, self.width), nn.LayerNorm(self.width))
        self.moe_layer = MoELayer(self.width, n_experts, top_k, n_chunks, n_attn_heads, noise_std,
                                  dropout, layerscale_init)
        self.dec1 = nn.Sequential(nn.Linear(self.width, dim), nn.BatchNorm1d(dim))
        self.dec2 = self.dec1  # one module registered twice, as in the release

    def encode_satellite(self, x):
        return self.shared_enc(x)

    def encode_drone(self, x):
        """-> (base + delta, load-balancing aux loss)."""
        base = self.shared_enc(x)
        delta, aux, _ = self.moe_layer(base)
        return base + delta, aux

    def encode(self, x, view: str):
        if view in SATELLITE_VIEWS:
            return self.encode_satellite(x)
        if view in DRONE_VIEWS:
            return self.encode_drone(x)[0]
        raise ValueError(f"view must be one of {SATELLITE_VIEWS + DRONE_VIEWS}, got {view!r}")

    def decode(self, z):
        return self.dec1(z)

    def embed(self, x, view: str, batch_size: int = 4096):
        """L2-normalised retrieval embedding (2C); rows are independent, so it runs in chunks."""
        outs = [l2n(self.encode(x[i:i + batch_size], view)) for i in range(0, x.shape[0], batch_size)]
        return torch.cat(outs) if outs else x.new_zeros(0, self.width)

    forward = embed


# --------------------------------------------------------------------------- ISMS
class ISMS(nn.Module):
    """Intrinsic Structure Mining Stream: Linear(in->latent, no bias, orthogonal init) ->
    BatchNorm1d whitening (affine, 1/0) -> Linear(latent->in).  ``forward -> (whitened, recon)``."""

    def __init__(self, in_dim: int, latent_dim: int):
        super().__init__()
        self.in_dim, self.latent_dim = in_dim, latent_dim
        self.encoder = nn.Linear(in_dim, latent_dim, bias=False)
        self.bn_whiten = nn.BatchNorm1d(latent_dim, affine=True)
        self.decoder = nn.Linear(latent_dim, in_dim)
        nn.init.orthogonal_(self.encoder.weight)
        nn.init.ones_(self.bn_whiten.weight)
        nn.init.zeros_(self.bn_whiten.bias)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, x):
        z = self.bn_whiten(self.encoder(x))
        return z, self.decoder(z)

    def embed(self, x, batch_size: int = 4096):
        """L2-normalised whitened latent (use in eval mode: BatchNorm running stats)."""
        outs = [l2n(self.bn_whiten(self.encoder(x[i:i + batch_size])))
                for i in range(0, x.shape[0], batch_size)]
        return torch.cat(outs) if outs else x.new_zeros(0, self.latent_dim)


def _gram_to_identity(rows: torch.Tensor) -> torch.Tensor:
    """||G - I||_F^2 / n for the Gram G of the L2-normalised rows (n rows)."""
    r = l2n(rows)
    g = r @ r.T
    return (g - torch.eye(g.shape[0], dtype=g.dtype, device=g.device)).pow(2).sum() / g.shape[0]


def isms_losses(x, latent, recon, module: ISMS) -> dict:
    """ISMS training losses (each to be weighted 1):

    * ``mse``: mean squared reconstruction error;
    * ``decorrelation``: ``||cov(latent) - I||_F^2 / d`` with the unbiased batch covariance of the
      whitened latent (needs >= 2 rows);
    * ``orthogonality``: the same Gram penalty for the encoder's rows (its d latent directions) plus
      the decoder's latent directions (rows of ``decoder.weight.T``: its 2C rows of d numbers
      cannot be orthonormal, its d columns can).
    """
    zc = latent - latent.mean(0, keepdim=True)
    cov = zc.T @ zc / max(latent.shape[0] - 1, 1)
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    return dict(
        mse=F.mse_loss(recon, x),
        decorrelation=(cov - eye).pow(2).sum() / cov.shape[0],
        orthogonality=_gram_to_identity(module.encoder.weight) + _gram_to_identity(module.decoder.weight.T),
    )


# --------------------------------------------------------------------------- fusion
def fuse(emb1: torch.Tensor, emb2: torch.Tensor, weight: float = 0.5) -> torch.Tensor:
    """``L2(concat(sqrt(w) L2(emb1), sqrt(1-w) L2(emb2)))``: its inner products are
    ``w cos_1 + (1-w) cos_2`` (the outer L2 is then a no-op up to rounding)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    return l2n(torch.cat([math.sqrt(weight) * l2n(emb1), math.sqrt(1.0 - weight) * l2n(emb2)], dim=-1))


# --------------------------------------------------------------------------- checkpoints
def export_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without the ``dec2.*`` aliases of ``dec1.*``, contiguous clones (safetensors-ready)."""
    return {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()
            if not k.startswith("dec2.")}

