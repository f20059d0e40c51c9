"""Head weights and training checkpoints as safetensors (never pickles), written atomically.

A training checkpoint holds the model, the learnable logit scale, the optimiser's state and both
random generators' states, so that resuming continues bit-for-bit where the run stopped.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..store import load_tensors, save_tensors
from .heads import export_state_dict


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
