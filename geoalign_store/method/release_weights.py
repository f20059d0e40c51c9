"""The paper's published head weights (``300_param.t``, ``isms_model_26_28.pth``) read into
:class:`~.heads.AGRA` and :class:`~.heads.ISMS`: only with ``torch.load(weights_only=True)``,
every key and shape checked, so that a user holding them reproduces the paper's numbers here.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .heads import AGRA, ISMS


def read_release_checkpoint(path) -> dict[str, torch.Tensor]:
    """Read a release checkpoint with ``torch.load(weights_only=True)`` and return its state dict."""
    from ..store import safe_torch_load
    obj = safe_torch_load(path, "a state dict of the paper's released heads")
    return unwrap_state_dict(obj, source=str(path))


def unwrap_state_dict(obj, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Accept a flat ``{name: tensor}`` mapping, possibly nested under ``model`` / ``state_dict``."""
    for _ in range(2):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = obj.get("model", obj.get("state_dict"))
            if isinstance(inner, Mapping):
                obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{source}: expected a state dict (a mapping of parameter names to tensors, "
                         f"possibly under 'model'), got {type(obj).__name__}"
                         + (" (empty)" if isinstance(obj, Mapping) else ""))
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise ValueError(f"{source}: not a state dict: {len(bad)} entries are not name->tensor, "
                         f"e.g. {bad[:5]}")
    return dict(obj)


def _check_and_load(module: nn.Module, sd: dict, what: str, optional=("num_batches_tracked",)):
    expected = {k: v for k, v in module.state_dict().items() if not k.startswith("dec2.")}
    missing = [k for k in expected if k not in sd and not k.endswith(optional)]
    unexpected = [k for k in sd if k not in expected]
    shaped = [f"{k}: got {tuple(sd[k].shape)}, expected {tuple(v.shape)}"
              for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    nonfinite = [k for k, v in sd.items() if k in expected and v.is_floating_point()
                 and not torch.isfinite(v).all()]
    if missing or unexpected or shaped or nonfinite:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("mis-shaped", shaped), ("non-finite values", nonfinite)):
            if items:
                parts.append(f"{label} ({len(items)}): " + "; ".join(items[:12])
                             + (" ..." if len(items) > 12 else ""))
        raise ValueError(f"{what}: checkpoint does not match " + " | ".join(parts))
    full = {k: (sd[k].to(v.dtype) if k in sd else v) for k, v in expected.items()}
    if any(k.startswith("dec2.") for k in module.state_dict()):
        full.update({"dec2." + k[5:]: v for k, v in full.items() if k.startswith("dec1.")})
    module.load_state_dict(full, strict=True)
    return module.eval()


def load_release_agra(sd, dim: int, **agra_kwargs) -> AGRA:
    """Build an :class:`AGRA` (descriptor dim C = ``dim``) from a release-format state dict.

    ``dec2.*`` keys, when present, must equal ``dec1.*`` exactly (the release registers one module
    twice, so a difference means the file is not what it claims) and are then dropped; they may
    also be absent.  Every other key must be present with the shape ``AGRA(dim)`` expects
    (``num_batches_tracked`` may be absent); otherwise a ValueError lists the missing, unexpected
    and mis-shaped keys.  Returns the module in eval mode.
    """
    sd = unwrap_state_dict(sd, "AGRA checkpoint")
    if "shared_enc.0.weight" in sd and sd["shared_enc.0.weight"].ndim == 2 \
            and sd["shared_enc.0.weight"].shape[1] != dim:
        raise ValueError(f"AGRA checkpoint: shared_enc.0.weight is {tuple(sd['shared_enc.0.weight'].shape)}, "
                         f"i.e. for C={sd['shared_enc.0.weight'].shape[1]} descriptors, but the "
                         f"features have C={dim}")
    dup = {k: v for k, v in sd.items() if k.startswith("dec2.")}
    differ = [k for k, v in dup.items()
              if ("dec1." + k[5:]) in sd and (sd["dec1." + k[5:]].shape != v.shape
                                               or not torch.equal(sd["dec1." + k[5:]], v))]
    if differ:
        raise ValueError(f"AGRA checkpoint: dec2.* must duplicate dec1.* (one module registered "
                         f"twice) but differs at {differ}")
    orphans = [k for k in dup if ("dec1." + k[5:]) not in sd]
    sd = {k: v for k, v in sd.items() if not k.startswith("dec2.")}
    for k in orphans:  # dec2 present without dec1: take it as the decoder
        sd["dec1." + k[5:]] = dup[k]
    return _check_and_load(AGRA(dim, **agra_kwargs), sd, f"AGRA checkpoint (C={dim})")


def load_release_isms(sd, dim: int | None = None) -> ISMS:
    """Build an :class:`ISMS` from a release-format state dict (``encoder.weight``,
    ``bn_whiten.*``, ``decoder.*``).  ``dim`` = C of the stored features (input 2C, latent C);
    when None it is read from ``encoder.weight``.  Shapes are checked as in :func:`load_release_agra`."""
    sd = unwrap_state_dict(sd, "ISMS checkpoint")
    w = sd.get("encoder.weight")
    if dim is None:
        if w is None or w.ndim != 2:
            raise ValueError("ISMS checkpoint: missing keys (1): encoder.weight (2-D) - cannot infer dims")
        latent, in_dim = w.shape
    else:
        latent, in_dim = dim, 2 * dim
    return _check_and_load(ISMS(in_dim, latent), sd, f"ISMS checkpoint (in {in_dim}, latent {latent})")
