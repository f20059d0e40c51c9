"""Head weights and training checkpoints as safetensors (never pickles), written atomically.

A training checkpoint holds the model, the learnable logit scale, the optimiser's state and both
random generators' states, so that resuming continues bit-for-bit where the run stopped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .config import ConfigError
from .heads import export_state_dict


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
              metadata={k: json.dumps(v) for k, v in (metadata or {}).items()})
    os.replace(tmp, path)


class CheckpointError(ConfigError):
    """A weights or checkpoint file that cannot be read as what it should be; names the file
    (a user error: the CLI prints it and exits 2)."""


def load_tensors(path: Path, remedy: str = "recompute it (its stage with overwrite=true)"
                 ) -> tuple[dict[str, torch.Tensor], dict]:
    """A safetensors file's tensors and JSON metadata; a truncated or foreign file is a
    CheckpointError naming it, never a deserializer traceback."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        return load_file(str(path)), metadata
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; {remedy}") from None
    except Exception as e:  # SafetensorError, JSON of foreign metadata, OSError mid-read
        raise _unreadable(path, e, remedy) from None


def check_safetensors(path: Path, expected: str) -> None:
    """Read a safetensors header and check the file covers every tensor it declares."""
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as e:
        raise _unreadable(path, e, f"expected {expected}") from None


def _unreadable(path: Path, error: Exception, then: str) -> CheckpointError:
    lines = str(error).strip().splitlines()
    what = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return CheckpointError(f"{path} is not a readable safetensors file ({what}): truncated, "
                           f"damaged or another format; {then}")


def safe_torch_load(path: Path, expected: str, mmap: bool = False):
    """`torch.load(weights_only=True)` whose failures name the file and what was expected; torch's
    own advice to set weights_only=False (which would run arbitrary code) is never passed on.
    mmap: tensors stay in the page cache until used (files in torch's zip format; others are
    read whole)."""
    import re
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. "Detected pickle protocol 4"
            return _torch_load(path, mmap)
    except Exception as e:  # text files raise KeyError/IndexError/UnpicklingError, zips BadZipFile
        glob = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        why = (f"it pickles a Python object ({glob.group(1)}), not plain tensors; such files are "
               "never unpickled, since that can execute arbitrary code" if glob else
               f"it is not a torch checkpoint of tensors: corrupt, truncated or another format "
               f"(torch.load raised {type(e).__name__})")
        raise CheckpointError(f"{path}: cannot be read safely as {expected}: {why}") from None


def _torch_load(path: Path, mmap: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as e:
        if mmap and "mmap" in str(e):  # an old (non-zip) torch.save format: read it whole
            return torch.load(path, map_location="cpu", weights_only=True)
        raise


def save_module(path: Path, module: torch.nn.Module, metadata: dict | None = None) -> None:
    save_tensors(path, export_state_dict(module), metadata)


def _optimizer_tensors(optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in sd["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"opt.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_training_state(path: Path, state) -> None:
    opt_tensors, opt_meta = _optimizer_tensors(state.optimizer)
    tensors = {**{f"model.{k}": v for k, v in export_state_dict(state.model).items()},
               "log_scale": state.log_scale.data, **opt_tensors,
               "rng.torch": torch.get_rng_state(), "rng.sampler": state.sampler.get_state()}
    if state.log_scale.is_cuda:  # gate noise and dropout draw from the GPU's generator there
        tensors["rng.cuda"] = torch.cuda.get_rng_state(state.log_scale.device)
    if state.teacher is not None:  # agra.teacher=isms: the plan in use (built from a past model)
        tensors["teacher.plan"], tensors["teacher.sim"] = state.teacher
    save_tensors(path, tensors, {"epoch": state.epoch, "optimizer": opt_meta})


def load_training_state(path: Path, state) -> None:
    """Restore `state` (built fresh with the same recipe and seed) from a checkpoint."""
    tensors, meta = load_tensors(path)
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    state.model.load_state_dict(model, strict=False)
    state.log_scale.data.copy_(tensors["log_scale"])
    opt_state: dict = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    for key, value in meta["optimizer"]["scalars"].items():
        index, name = key.split(".", 1)
        opt_state.setdefault(int(index), {})[name] = value
    state.optimizer.load_state_dict({"state": opt_state, "param_groups": meta["optimizer"]["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    state.sampler.set_state(tensors["rng.sampler"])
    if "rng.cuda" in tensors and state.log_scale.is_cuda:
        torch.cuda.set_rng_state(tensors["rng.cuda"], state.log_scale.device)
    state.epoch = int(meta["epoch"])
    if "teacher.plan" in tensors:
        state.teacher = (tensors["teacher.plan"], tensors["teacher.sim"])
