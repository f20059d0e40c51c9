"""Convert an official DINOv3 ViT checkpoint (facebookresearch/dinov3 ``.pth``) to
``transformers.DINOv3ViTModel`` weights, key by key (SPEC §2).

Mapping (official -> transformers), ``i`` = block index::

    cls_token                     -> embeddings.cls_token
    storage_tokens (1,R,D)        -> embeddings.register_tokens   (R = 0: an empty (1,0,D) tensor)
    mask_token (1,D)              -> embeddings.mask_token (1,1,D)
    patch_embed.proj.{weight,bias}-> embeddings.patch_embeddings.{weight,bias}
    blocks.i.norm{1,2}.*          -> model.layer.i.norm{1,2}.*
    blocks.i.attn.qkv.weight      -> attention.{q,k,v}_proj.weight   (split in three along dim 0)
    blocks.i.attn.qkv.bias        -> attention.{q,v}_proj.bias       (times qkv.bias_mask first; the
                                     masked key bias is zero and dropped: key_bias=False)
    blocks.i.attn.proj.*          -> attention.o_proj.*
    blocks.i.ls{1,2}.gamma        -> layer_scale{1,2}.lambda1        (absent: ones)
    blocks.i.mlp.w1 / w2 / w3     -> mlp.gate_proj / up_proj / down_proj  (SwiGLU: w3(silu(w1 x) * w2 x))
    blocks.i.mlp.fc1 / fc2        -> mlp.up_proj / down_proj              (plain GELU MLP)
    norm.*                        -> norm.*

Ignored: ``rope_embed.periods`` (recomputed by transformers from ``rope_theta``; it is checked
against, and used to infer, ``rope_theta`` and the head count) and ``local_cls_norm.*`` (used only
in training, on local crops). ``cls_norm.*`` (untied CLS norm) has no transformers equivalent and
is refused. Training checkpoints (``{"teacher": {"backbone.<key>": ...}}``) are unwrapped.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

# Official hub architectures (dinov3/hub/backbones.py); intermediate = the MLP/SwiGLU hidden width.
OFFICIAL_ARCHS: dict[str, dict] = {
    "vits16": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "vits16plus": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "vitb16": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "vitl16": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "vitl16plus": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "vith16plus": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=20, intermediate_size=5120),
    "vit7b16": dict(hidden_size=4096, num_hidden_layers=40, num_attention_heads=32, intermediate_size=8192),
}
_HEADS_BY_WIDTH = {a["hidden_size"]: a["num_attention_heads"] for a in OFFICIAL_ARCHS.values()}
IGNORED_PREFIXES = ("rope_embed.periods", "local_cls_norm.")
_NESTING_KEYS = ("teacher", "model", "state_dict", "module")


def _unwrap(obj, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The backbone's flat state dict inside a (possibly nested / prefixed) checkpoint."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a state dict (a dict of tensors), got {type(obj).__name__}")
    while "cls_token" not in obj and not any(k.endswith(".cls_token") for k in obj):
        inner = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise ValueError(f"{where}: no DINOv3 backbone found (no 'cls_token' key; top-level keys: "
                             f"{sorted(map(str, obj))[:10]})")
        obj = inner
    heads = [k[: -len("cls_token")] for k in obj if k == "cls_token" or k.endswith(".cls_token")]
    if len(heads) > 1:
        teacher = [h for h in heads if h.startswith("teacher.")]
        if len(teacher) != 1:
            raise ValueError(f"{where}: several backbones in one checkpoint: {sorted(heads)}")
        heads = teacher
    prefix = heads[0]
    sd = {k[len(prefix):]: v for k, v in obj.items() if k.startswith(prefix)}
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{where}: entries that are not tensors: {bad[:10]}")
    if "register_tokens" in sd and "storage_tokens" not in sd:  # older naming, see dinov3 build_dinotxt
        sd["storage_tokens"] = sd.pop("register_tokens")
    return sd


@functools.lru_cache(maxsize=1)
def _layer_prefix() -> str:
    """Where DINOv3ViTModel keeps its blocks ('model.layer' in transformers 5.x, 'layer' before)."""
    import transformers
    cfg = transformers.DINOv3ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=8)
    with torch.device("meta"):
        keys = transformers.DINOv3ViTModel(cfg).state_dict().keys()
    return next(k for k in keys if k.endswith(".0.norm1.weight"))[: -len(".0.norm1.weight")]


def convert_official_state_dict(sd: dict[str, torch.Tensor], layer_prefix: str | None = None,
                                copy: bool = True) -> dict[str, torch.Tensor]:
    """Official DINOv3 ViT state dict (flat or nested) -> ``DINOv3ViTModel`` state dict, its blocks
    under `layer_prefix` (default: where the installed transformers keeps them; geoalign's own
    forward, geoalign_store/vit.py, names them "layer"). copy=False leaves q, k and v as views of
    the fused qkv tensors (no copy of a memory-mapped file; not for save_pretrained, which
    refuses shared storage)."""
    sd = _unwrap(sd)
    used: set[str] = set()
    missing: list[str] = []

    def take(key: str, required: bool = True) -> torch.Tensor | None:
        if key in sd:
            used.add(key)
            return sd[key]
        if required:
            missing.append(key)
        return None

    out: dict[str, torch.Tensor] = {}
    cls = take("cls_token")
    dim = cls.shape[-1] if cls is not None else 0
    out["embeddings.cls_token"] = cls
    reg = take("storage_tokens", required=False)
    out["embeddings.register_tokens"] = reg if reg is not None else torch.zeros(1, 0, dim, dtype=cls.dtype)
    mask = take("mask_token")
    out["embeddings.mask_token"] = mask.reshape(1, 1, -1).clone() if mask is not None else None
    for p in ("weight", "bias"):
        out[f"embeddings.patch_embeddings.{p}"] = take(f"patch_embed.proj.{p}")
        out[f"norm.{p}"] = take(f"norm.{p}")

    depth = 1 + max((int(k.split(".")[1]) for k in sd if k.startswith("blocks.")), default=-1)
    lp = layer_prefix or _layer_prefix()
    for i in range(depth):
        b, h = f"blocks.{i}.", f"{lp}.{i}."
        for n in ("norm1", "norm2"):
            for p in ("weight", "bias"):
                out[f"{h}{n}.{p}"] = take(f"{b}{n}.{p}")
        qkv_w = take(f"{b}attn.qkv.weight")
        if qkv_w is not None:
            for name, w in zip("qkv", qkv_w.chunk(3, dim=0)):
                out[f"{h}attention.{name}_proj.weight"] = w.clone() if copy else w
        qkv_b = take(f"{b}attn.qkv.bias", required=False)
        if qkv_b is not None:
            bias_mask = take(f"{b}attn.qkv.bias_mask", required=False)
            if bias_mask is not None:
                qkv_b = qkv_b * bias_mask.to(qkv_b.dtype)
            q_b, k_b, v_b = (t.clone() if copy else t for t in qkv_b.chunk(3))
            out[f"{h}attention.q_proj.bias"] = q_b
            out[f"{h}attention.v_proj.bias"] = v_b
            if bool(k_b.any()):  # a key bias that is really used (no mask / mask keeps it)
                out[f"{h}attention.k_proj.bias"] = k_b
        out[f"{h}attention.o_proj.weight"] = take(f"{b}attn.proj.weight")
        if (pb := take(f"{b}attn.proj.bias", required=False)) is not None:
            out[f"{h}attention.o_proj.bias"] = pb
        for j in (1, 2):
            gamma = take(f"{b}ls{j}.gamma", required=False)
            out[f"{h}layer_scale{j}.lambda1"] = gamma if gamma is not None else torch.ones(dim)
        gated = f"{b}mlp.w3.weight" in sd
        names = ({"w1": "gate_proj", "w2": "up_proj", "w3": "down_proj"} if gated
                 else {"fc1": "up_proj", "fc2": "down_proj"})
        for src, dst in names.items():
            out[f"{h}mlp.{dst}.weight"] = take(f"{b}mlp.{src}.weight")
            if (mb := take(f"{b}mlp.{src}.bias", required=False)) is not None:
                out[f"{h}mlp.{dst}.bias"] = mb

    unexpected = sorted(k for k in sd if k not in used and not k.startswith(IGNORED_PREFIXES))
    if missing or unexpected or depth == 0:
        hint = " ('cls_norm' = untied CLS norm, not supported by DINOv3ViTModel)" if any(
            k.startswith("cls_norm.") for k in unexpected) else ""
        raise ValueError(f"not an official DINOv3 ViT state dict: missing keys {missing[:20]}, "
                         f"unexpected keys {unexpected[:20]}{hint}" + ("" if depth else ", no 'blocks.*'"))
    return out


def _rope_theta_and_heads(sd, dim: int) -> tuple[float | None, int | None]:
    periods = sd.get("rope_embed.periods")
    if periods is None or periods.numel() == 0:
        return None, None
    periods = periods.double()
    head_dim = 4 * periods.numel()
    heads = dim // head_dim
    theta = 100.0 if periods.numel() < 2 else float(periods[1]) ** (head_dim / 4)
    for cand in (100.0, theta):  # prefer the official 100 when the stored periods are low precision
        expect = cand ** (4 * torch.arange(periods.numel(), dtype=torch.float64) / head_dim)
        if torch.allclose(periods, expect, rtol=1e-2 if cand == 100.0 else 1e-4):
            return cand, heads
    raise ValueError("rope_embed.periods is not base**(4i/head_dim) (min/max-period RoPE is not "
                     "supported by DINOv3ViTModel)")


def config_from_official_state_dict(sd: dict[str, torch.Tensor], **overrides):
    """Infer a ``transformers.DINOv3ViTConfig`` from official weights; ``overrides`` win."""
    import transformers
    return transformers.DINOv3ViTConfig(**official_arch(sd, **overrides))


def official_arch(sd: dict[str, torch.Tensor], **overrides) -> dict:
    """The architecture of official weights, as a DINOv3ViTConfig's keyword arguments (every
    key of backbone.ARCH_KEYS among them); ``overrides`` win over anything inferred."""
    sd = _unwrap(sd)
    pw = sd["patch_embed.proj.weight"]
    dim = pw.shape[0]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    gated = "blocks.0.mlp.w3.weight" in sd
    theta, heads = _rope_theta_and_heads(sd, dim)
    qkv_b = sd.get("blocks.0.attn.qkv.bias")
    key_bias = qkv_b is not None
    if qkv_b is not None and "blocks.0.attn.qkv.bias_mask" in sd:
        key_bias = bool((qkv_b * sd["blocks.0.attn.qkv.bias_mask"].to(qkv_b.dtype)).chunk(3)[1].any())
    storage = sd.get("storage_tokens")
    kw = dict(
        patch_size=pw.shape[-1], num_channels=pw.shape[1], hidden_size=dim, num_hidden_layers=depth,
        num_attention_heads=heads or _HEADS_BY_WIDTH.get(dim, max(dim // 64, 1)),
        intermediate_size=sd["blocks.0.mlp.w1.weight" if gated else "blocks.0.mlp.fc1.weight"].shape[0],
        hidden_act="silu" if gated else "gelu", use_gated_mlp=gated,
        num_register_tokens=0 if storage is None else storage.shape[1],
        layer_norm_eps=1e-5,  # official "layernormbf16": nn.LayerNorm(eps=1e-5)
        rope_theta=theta or 100.0,
        query_bias=qkv_b is not None, key_bias=key_bias, value_bias=qkv_b is not None,
        proj_bias="blocks.0.attn.proj.bias" in sd,
        mlp_bias=("blocks.0.mlp.w1.bias" if gated else "blocks.0.mlp.fc1.bias") in sd,
        layerscale_value=1.0, pos_embed_rescale=2.0,
    )
    kw.update(overrides)
    return kw


def _read_official(path: Path) -> dict:
    from ..store import safe_torch_load
    obj = safe_torch_load(path, "an official dinov3 checkpoint (a state dict of tensors)", mmap=True)
    return _unwrap(obj, where=str(path))


def load_official_checkpoint(path, **overrides):
    """Load an official ``.pth`` safely (``weights_only=True``) -> (transformers config,
    DINOv3ViTModel state dict)."""
    sd = _read_official(Path(path))
    return config_from_official_state_dict(sd, **overrides), convert_official_state_dict(sd)


def read_official(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(architecture, state dict named as geoalign_store.features.vit names it) of an official ``.pth``,
    memory-mapped where the file allows and not copied (a ViT-H+/16 .pth: 0.3 s and a 1.5 GB peak
    -> 0.1 s and 0.25 GB), without importing transformers (seconds per process)."""
    sd = _read_official(Path(path))
    return official_arch(sd), convert_official_state_dict(sd, layer_prefix="layer", copy=False)


__all__ = ["OFFICIAL_ARCHS", "convert_official_state_dict", "config_from_official_state_dict",
           "load_official_checkpoint", "official_arch", "read_official"]
