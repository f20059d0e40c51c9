"""Tensor files of the store's artefacts and of the user's weights: safetensors written atomically,
and every read (safetensors, or a `.pt/.pth/.t` through `torch.load(weights_only=True)`) failing
with a CheckpointError that names the file, never a deserializer traceback or a pickle run.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..config import ConfigError


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
              metadata={k: json.dumps(v) for k, v in (metadata or {}).items()})
    os.replace(tmp, path)


# What a safetensors read of a damaged or foreign file raises (its header, its JSON metadata, I/O).
SAFETENSORS_FAILURES = (SafetensorError, json.JSONDecodeError, UnicodeDecodeError, OSError)
# What torch.load(weights_only=True) raises on a file that is not a checkpoint of tensors: text
# and garbage (UnpicklingError, KeyError, IndexError, EOFError, ValueError, struct.error), zips of
# other things (BadZipFile, RuntimeError), a .safetensors (torch 2.13 hands those to safetensors),
# an unreadable file (OSError).
TORCH_LOAD_FAILURES = (pickle.UnpicklingError, RuntimeError, ValueError, KeyError, IndexError,
                       EOFError, struct.error, zipfile.BadZipFile, SafetensorError, OSError)


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
    except SAFETENSORS_FAILURES as e:
        raise _unreadable(path, e, remedy) from None


def check_safetensors(path: Path, expected: str) -> None:
    """Read a safetensors header and check the file covers every tensor it declares."""
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except SAFETENSORS_FAILURES as e:
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
    except TORCH_LOAD_FAILURES as e:
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
