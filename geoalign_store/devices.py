"""`device=auto|cpu|cuda[:N]`: the one place a device name becomes a torch.device.

Every computing stage takes `device`; results on CPU never depend on whether a GPU exists, and a
name that cannot be honoured is a config error naming `device=`, never a CUDA traceback later.
"""

from __future__ import annotations

import re

import torch

from .config import ConfigError

_NAME = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(name) -> torch.device:
    """`auto` -> cuda (device 0) when one is visible, else cpu; `cuda[:N]` must exist."""
    text = "auto" if name is None else str(name).strip().lower()
    if not _NAME.match(text):
        raise ConfigError(f"device={name!r} is not one of auto, cpu, cuda, cuda:N")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(text.split(":", 1)[1]) if ":" in text else 0
    if index >= count:
        seen = f"{count} CUDA device(s) visible" if count else "no CUDA device is visible"
        raise ConfigError(f"device={name} is not available ({seen}); use device=cpu or device=auto")
    return torch.device("cuda", index)
