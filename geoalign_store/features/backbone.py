"""The frozen DINOv3 backbone and the paper's descriptors (SPEC §2).

Weights always come from a local path: a Hugging Face folder (config.json + safetensors) or an
official dinov3 `.pth` (converted key by key). A random model (`backbone=tiny`, or any backbone
with `backbone.seed` set) is first written to the cache as such a folder and then loaded from
it, so tests and the demo run the exact code path of real weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import CONFIG_DIR, ConfigError, file_sha256, fingerprint

ARCH_KEYS = ("patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size", "num_register_tokens", "use_gated_mlp", "hidden_act",
             "layer_norm_eps", "rope_theta")
GEM_P = 3.0
GEM_EPS = 1e-6
AUTO = "auto"  # backbone=auto: the architecture comes from the weights themselves


def cache_dir() -> Path:
    return Path(os.environ.get("GEOALIGN_CACHE", Path.home() / ".cache" / "geoalign"))


def resolve_layers(layers, depth: int) -> list[int]:
    resolved = [k + depth if k < 0 else k for k in layers]
    bad = [k for k, r in zip(layers, resolved) if not 0 <= r < depth]
    if bad or not resolved:
        raise ConfigError(f"layers {list(layers)}: block indices must lie in [-{depth}, {depth - 1}]"
                          f" for a {depth}-block backbone")
    return resolved


def arch_name(arch: dict) -> str:
    """The configs/backbone/<name>.yaml whose architecture `arch` is, else "custom": the name a
    fingerprint records when backbone=auto, so it is the same whether or not the user named it."""
    import yaml
    for path in sorted(CONFIG_DIR.glob("backbone/*.yaml")):
        known = yaml.safe_load(path.read_text()) or {}
        if known.get("name") != AUTO and all(known.get(k) == arch.get(k) for k in ARCH_KEYS):
            return str(known["name"])
    return "custom"


def resolve_backbone(bcfg: dict, weights) -> tuple[dict, Path, dict]:
    """(backbone config, weights path, architecture of the weights). backbone=auto takes the
    architecture from the weights; a named backbone is checked against them."""
    path = weights_source(bcfg, weights)
    arch = read_arch(path)
    if bcfg["name"] == AUTO:
        bcfg = {**bcfg, **{k: arch[k] for k in ARCH_KEYS if k in arch}, "name": arch_name(arch)}
    check_arch(bcfg, arch, path)
    return bcfg, path, arch


def _random_weights_folder(bcfg) -> Path:
    """Materialise a seeded random model as an HF folder in the cache (once)."""
    arch = {k: bcfg[k] for k in ARCH_KEYS}
    name = arch_name(arch) if bcfg["name"] == AUTO else bcfg["name"]
    folder = cache_dir() / "backbones" / f"{name}-seed{bcfg['seed']}-{fingerprint(arch)[:12]}"
    if not (folder / "model.safetensors").exists():
        from transformers import DINOv3ViTConfig, DINOv3ViTModel  # slow import: only when building
        _quiet_transformers()
        torch.manual_seed(int(bcfg["seed"]))
        model = DINOv3ViTModel(DINOv3ViTConfig(**arch))
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        model.save_pretrained(tmp, safe_serialization=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process won the race: its folder is identical
            pass
    return folder


def weights_source(bcfg, weights) -> Path:
    if weights:
        path = Path(weights).expanduser()
        if not path.exists():
            raise ConfigError(f"weights={path} does not exist")
        return path
    if bcfg.get("seed") is None:
        raise ConfigError(f"backbone {bcfg['name']!r} needs weights=PATH (a folder with config.json"
                          " + safetensors, or the official dinov3 .pth); nothing is downloaded. "
                          "For timing with random weights add backbone.seed=0")
    return _random_weights_folder(bcfg)


def weights_fingerprint(path: Path) -> str:
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise ConfigError(f"no *.safetensors in {path}")
    return fingerprint([cached_sha256(f) for f in files])


def cached_sha256(path: Path) -> str:
    """sha256 of a weights file, remembered by (absolute path, size, mtime in ns) in the cache's
    weights_sha256.json: hashing a multi-GB file cost every run seconds (~2 GB/s at best), and
    any rewrite of the file changes its size or mtime, so a stale entry is never used."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    index = cache_dir() / "weights_sha256.json"
    try:
        known = json.loads(index.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known = {k: v for k, v in known.items() if not k.startswith(f"{path.resolve()}|")}
        known[key] = file_sha256(path)
        index.parent.mkdir(parents=True, exist_ok=True)
        tmp = index.with_name(f"{index.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, index)
    return known[key]


def read_arch(path: Path) -> dict:
    """Architecture of the weights at `path`, without loading them when it is a folder."""
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ConfigError(f"{path} has no config.json (expected a Hugging Face DINOv3 folder)")
        try:
            arch = json.loads((path / "config.json").read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path / 'config.json'} is not valid JSON ({e}); expected the "
                              "config.json of a Hugging Face DINOv3 folder") from None
        _check_weight_files(path)
        return arch
    from .dinov3_convert import read_official
    try:
        return read_official(path)[0]
    except ValueError as e:  # CheckpointError (unreadable) or a state dict that is not DINOv3's
        message = str(e) if str(e).startswith(str(path)) else f"{path}: {e}"
        raise ConfigError(f"weights={message}") from None


def _check_weight_files(folder: Path) -> None:
    from ..store import check_safetensors
    for file in sorted(folder.glob("*.safetensors")):
        check_safetensors(file, "the weights of a Hugging Face DINOv3 folder (config.json + "
                                "model.safetensors, as save_pretrained writes them)")


def check_arch(bcfg, arch: dict, path: Path) -> None:
    if bcfg["name"] == AUTO:  # nothing to check: the weights say what they are
        return
    for key in ("patch_size", "hidden_size", "num_hidden_layers", "num_register_tokens"):
        if key in arch and arch[key] != bcfg[key]:
            raise ConfigError(f"weights {path} have {key}={arch[key]} but backbone "
                              f"{bcfg['name']!r} expects {bcfg[key]}; choose the matching backbone=")


@dataclass
class Backbone:
    model: torch.nn.Module
    layers: list[int]
    n_registers: int
    patch_size: int
    channels: int
    device: torch.device
    dtype: torch.dtype | None  # weights' dtype when not float32 (bf16), None = fp32
    compiled: bool = False     # blocks run through torch.compile (fused elementwise kernels)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def compute_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 for precision=bf16, or auto on CUDA; None (fp32) otherwise."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"precision={precision!r} is not one of auto, fp32, bf16")
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.bfloat16 if use_bf16 else None


def load_backbone(bcfg, weights, layers, device="cpu", precision="auto", compile=False) -> Backbone:
    """The frozen backbone, cut after the deepest requested block (the later blocks' weights are
    never materialised), on `device`, in fp32 or bf16."""
    from .vit import load_vit, read_folder_weights
    path = weights_source(bcfg, weights)
    if path.is_dir():
        arch = read_arch(path)
        check_arch(bcfg, arch, path)
        resolved = resolve_layers(layers, arch["num_hidden_layers"])
        state = read_folder_weights(path, max(resolved) + 1)
    else:
        from .dinov3_convert import read_official
        arch, state = read_official(path)
        check_arch(bcfg, arch, path)
        resolved = resolve_layers(layers, arch["num_hidden_layers"])
    try:
        model = load_vit(arch, state, max(resolved) + 1)
    except (RuntimeError, KeyError, ValueError) as e:  # names or shapes that are not DINOv3's
        raise ConfigError(f"weights {path} do not fit a DINOv3 ViT of their config: "
                          f"{str(e).strip().splitlines()[0][:300]}") from None
    device = torch.device(device)
    dtype = compute_dtype(precision, device)
    model = model.eval().requires_grad_(False).to(device)
    if dtype is not None:
        # bf16 weights for the attention and MLP (their matmuls are the FLOPs), not fp32 weights
        # under autocast: no per-batch weight casts (measured on an H200: 178 vs 155 img/s).
        # The residual stream, the norms, the layer scales, the patch embedding and RoPE's
        # frequencies stay fp32 (Block.forward): a bf16 residual summed 29 blocks of rounding
        # (ViT-H+/16, random weights, 160 px on CPU: max |bf16 - fp32| of the descriptors
        # 6.0e-4 with everything in bf16, 3.5e-4 so). Cast after the move (on the GPU: fast).
        for block in model.layer:
            block.attention.to(dtype)
            block.mlp.to(dtype)
    if compile:
        # Every block has the same code, and torch.compile treats a module's weights as inputs,
        # so one compiled graph serves all blocks and, the batch dimension being marked dynamic
        # (layer_tokens), every batch size. Inductor caches the kernels on disk: later runs on
        # the machine pay seconds, not the first run's tens of seconds.
        for block in model.layer:
            block.compile()
    return Backbone(model, resolved, arch["num_register_tokens"], arch["patch_size"],
                    arch["hidden_size"], device, dtype, bool(compile))


def layer_tokens(bb: Backbone, pixels: torch.Tensor) -> dict[int, torch.Tensor]:
    """Final-norm'ed output of each requested block: (B, 1 + registers + patches, C), float32.

    The blocks are run one by one (patch + register embeddings, RoPE from the pixel grid, then
    each block with those position embeddings), so only the requested blocks' outputs are kept
    instead of every hidden state."""
    with torch.inference_mode():
        x = pixels.to(bb.device, non_blocking=True).float()
        hidden = bb.model.embeddings(x)
        rope = tuple(r.to(bb.dtype or torch.float32) for r in bb.model.rope_embeddings(x))
        if bb.compiled and len(hidden) > 1:
            # compile for any batch size at once: a smaller last batch must not recompile
            torch._dynamo.mark_dynamic(hidden, 0)
        out = {}
        for k, block in enumerate(bb.model.layer):
            hidden = block(hidden, position_embeddings=rope)
            if k in bb.layers:
                out[k] = bb.model.norm(hidden)
        return out


def gem_descriptor(patches: torch.Tensor, p: float = GEM_P) -> torch.Tensor:
    """The paper's descriptor of (B, P, C) patch tokens: per-position L2 over channels, GeM
    (p=3, clamp 1e-6) over positions, L2 of the C-vector."""
    x = F.normalize(patches.float(), dim=-1)
    pooled = x.clamp(min=GEM_EPS).pow(p).mean(dim=1).pow(1.0 / p)
    return F.normalize(pooled, dim=-1)


def pool_tokens(tokens: torch.Tensor, grid: tuple[int, int], k: int) -> torch.Tensor:
    """(B, P, C) -> (B, P/k^2, C) average pool over k x k patches, for compact token storage."""
    if k == 1:
        return tokens
    b, _, c = tokens.shape
    x = tokens.transpose(1, 2).reshape(b, c, *grid)
    return F.avg_pool2d(x, k).flatten(2).transpose(1, 2)
