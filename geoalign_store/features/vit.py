"""The DINOv3 ViT forward in plain torch, loading the Hugging Face folder's weights by their names.

Why not `transformers.DINOv3ViTModel`: importing it costs ~4 s (it pulls in torch._dynamo,
torch.distributed.tensor, scipy.optimize, ...), paid by every `extract` and `locate` process,
and we only need inference. This module follows the same equations (the dinov3 repository's and
transformers'): patch embedding, CLS + register tokens, 2-D RoPE on the patch tokens of the
queries and keys, pre-norm blocks with layer scale, SwiGLU or GELU MLP, final LayerNorm.
tests/test_vit.py checks it against transformers' own forward. transformers is still what
builds a seeded random model (once, into the cache); official `.pth` weights are converted to
these names by dinov3_convert.read_official.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu, "swish": F.silu}


class Embeddings(nn.Module):
    def __init__(self, cfg: dict, device=None):
        super().__init__()
        c = cfg["hidden_size"]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c, device=device))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c, device=device))  # training only; kept to load strictly
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg["num_register_tokens"], c, device=device))
        p = cfg["patch_size"]
        self.patch_embeddings = nn.Conv2d(cfg.get("num_channels", 3), c, kernel_size=p, stride=p, device=device)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        b = pixels.shape[0]
        patches = self.patch_embeddings(pixels.to(self.patch_embeddings.weight.dtype)).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(b, -1, -1), self.register_tokens.expand(b, -1, -1), patches], dim=1)


class Rope(nn.Module):
    """2-D rotary embedding of the patch centres, normalised to [-1, 1] (no training-time
    augmentation): (cos, sin), each (patches, head_dim), in the pixels' dtype."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.patch_size = cfg["patch_size"]
        head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
        inv_freq = 1 / cfg["rope_theta"] ** torch.arange(0, 1, 4 / head_dim, dtype=torch.float32)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
        device = pixels.device
        ys = torch.arange(0.5, h, dtype=torch.float32, device=device) / h
        xs = torch.arange(0.5, w, dtype=torch.float32, device=device) / w
        coords = 2.0 * torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1) - 1.0
        angles = (2 * math.pi * coords[:, :, None] * self.inv_freq[None, None, :]).flatten(1, 2).tile(2)
        return torch.cos(angles).to(pixels.dtype), torch.sin(angles).to(pixels.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope_patches(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the patch tokens only (the CLS and register tokens come first, unrotated)."""
    prefix, patches = x.split((x.shape[-2] - cos.shape[-2], cos.shape[-2]), dim=-2)
    return torch.cat((prefix, patches * cos + _rotate_half(patches) * sin), dim=-2)


class Attention(nn.Module):
    def __init__(self, cfg: dict, device=None):
        super().__init__()
        c = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.q_proj = nn.Linear(c, c, bias=cfg.get("query_bias", True), device=device)
        self.k_proj = nn.Linear(c, c, bias=cfg.get("key_bias", False), device=device)
        self.v_proj = nn.Linear(c, c, bias=cfg.get("value_bias", True), device=device)
        self.o_proj = nn.Linear(c, c, bias=cfg.get("proj_bias", True), device=device)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (proj(x).view(b, t, self.heads, c // self.heads).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        q, k = _rope_patches(q, *rope), _rope_patches(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v, scale=(c // self.heads) ** -0.5)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, c))


class LayerScale(nn.Module):
    def __init__(self, cfg: dict, device=None):
        super().__init__()
        self.lambda1 = nn.Parameter(torch.ones(cfg["hidden_size"], device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.lambda1


class Mlp(nn.Module):
    """SwiGLU (down(act(gate x) * up x)) when gated, else down(act(up x))."""

    def __init__(self, cfg: dict, device=None):
        super().__init__()
        c, inner, bias = cfg["hidden_size"], cfg["intermediate_size"], cfg.get("mlp_bias", True)
        self.gated = bool(cfg.get("use_gated_mlp", False))
        if self.gated:
            self.gate_proj = nn.Linear(c, inner, bias=bias, device=device)
        self.up_proj = nn.Linear(c, inner, bias=bias, device=device)
        self.down_proj = nn.Linear(inner, c, bias=bias, device=device)
        self.act = ACTIVATIONS[cfg.get("hidden_act", "gelu")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(self.act(self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, cfg: dict, device=None):
        super().__init__()
        c, eps = cfg["hidden_size"], cfg.get("layer_norm_eps", 1e-5)
        self.norm1, self.norm2 = (nn.LayerNorm(c, eps=eps, device=device) for _ in range(2))
        self.attention, self.mlp = Attention(cfg, device), Mlp(cfg, device)
        self.layer_scale1, self.layer_scale2 = LayerScale(cfg, device), LayerScale(cfg, device)

    def forward(self, x: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x: the residual stream, kept in its own dtype (fp32) when the attention and MLP run in
        bf16: only their inputs are cast down, and their outputs are scaled and added in fp32."""
        dtype = self.attention.q_proj.weight.dtype
        x = x + self.layer_scale1(self.attention(self.norm1(x).to(dtype), position_embeddings).to(x.dtype))
        return x + self.layer_scale2(self.mlp(self.norm2(x).to(dtype)).to(x.dtype))


class DinoV3ViT(nn.Module):
    """Parameter names are the Hugging Face folder's (`embeddings.*`, `layer.<i>.*`, `norm.*`).
    device="meta": parameters without storage, to be given the loaded tensors (load_vit)."""

    def __init__(self, cfg: dict, device=None):
        super().__init__()
        act = cfg.get("hidden_act", "gelu")
        if act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {act!r} is not supported (expected one of {sorted(ACTIVATIONS)})")
        self.embeddings = Embeddings(cfg, device)
        self.rope_embeddings = Rope(cfg)  # its frequencies are computed, never loaded
        self.layer = nn.ModuleList(Block(cfg, device) for _ in range(cfg["num_hidden_layers"]))
        self.norm = nn.LayerNorm(cfg["hidden_size"], eps=cfg.get("layer_norm_eps", 1e-5), device=device)


def load_vit(arch: dict, state: dict[str, torch.Tensor], blocks: int) -> DinoV3ViT:
    """The first `blocks` blocks of the model `arch` describes, with weights `state` (strict:
    every name must match). Built on the meta device and then given the loaded tensors
    themselves: no random initialisation and no copy (for ViT-H+ that was seconds and 3 GB)."""
    model = DinoV3ViT({**arch, "num_hidden_layers": blocks}, device="meta")
    model.load_state_dict(kept_blocks(state, blocks), strict=True, assign=True)
    return model


def kept_blocks(state: dict, blocks: int) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("layer.") or int(k.split(".", 2)[1]) < blocks}


def read_folder_weights(folder: Path, blocks: int) -> dict[str, torch.Tensor]:
    """The tensors of a Hugging Face folder's *.safetensors that the first `blocks` blocks need."""
    from safetensors import safe_open
    state: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in kept_blocks(dict.fromkeys(f.keys()), blocks):
                state[name] = f.get_tensor(name)
    return state
