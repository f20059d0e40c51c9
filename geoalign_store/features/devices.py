"""`device=auto|cpu|cuda[:N]`: the one place a device name is resolved.

Every computing stage takes `device`; results on CPU never depend on whether a GPU exists, and a
name that cannot be honoured is a config error naming `device=`, never a CUDA traceback later.
`device_name` imports torch only when a GPU could be there (a CUDA name, or `auto` on a machine
with a GPU driver): a CPU scoring process never pays torch's ~1.4 s import.
"""

from __future__ import annotations

import os
import re
import sys

from ..config import ConfigError

_NAME = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
# device files of the NVIDIA driver (and of ROCm and WSL, where torch.cuda also works)
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version", "/dev/kfd", "/dev/dxg")


def device_name(name) -> str:
    """'cpu' or 'cuda:N': `auto` -> cuda:0 when one is visible, else cpu; `cuda[:N]` must exist."""
    text = "auto" if name is None else str(name).strip().lower()
    if not _NAME.match(text):
        raise ConfigError(f"device={name!r} is not one of auto, cpu, cuda, cuda:N")
    if text == "cpu" or (text == "auto" and not _gpu_possible()):
        return "cpu"
    import torch
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if text == "auto":
        return "cuda:0" if count else "cpu"
    index = int(text.split(":", 1)[1]) if ":" in text else 0
    if index >= count:
        seen = f"{count} CUDA device(s) visible" if count else "no CUDA device is visible"
        raise ConfigError(f"device={name} is not available ({seen}); use device=cpu or device=auto")
    return f"cuda:{index}"


def resolve_device(name):
    """device_name as a torch.device."""
    import torch
    return torch.device(device_name(name))


def _gpu_possible() -> bool:
    """False only when no GPU can be visible: torch is not loaded yet and no GPU driver's device
    file exists (then torch.cuda.is_available() would be False too)."""
    return "torch" in sys.modules or any(os.path.exists(p) for p in GPU_DEVICE_FILES)


def local_worker_devices(n_workers: int, device) -> list[str] | None:
    """What each of `cluster=local:N`'s workers computes on: with device=auto (a GPU visible)
    or device=cuda, worker i gets cuda:i (one GPU each: worker_devices.DevicePerWorker tells it;
    extract's blocks and index's shards alike); N above the visible GPUs is an error.
    None: every worker uses the device as given (cpu, or an explicit cuda:K)."""
    text = str(device).strip().lower()
    if not device_name(device).startswith("cuda") or text not in ("auto", "cuda"):
        return None
    import torch
    count = torch.cuda.device_count()
    if n_workers > count:
        raise ConfigError(f"cluster=local:{n_workers} gives each worker its own GPU, but only "
                          f"{count} CUDA device(s) are visible; use cluster=local:{count} "
                          "(or device=cuda:K to put every worker on one GPU)")
    return [f"cuda:{i}" for i in range(n_workers)]
