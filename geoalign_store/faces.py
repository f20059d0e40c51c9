"""The mechanism behind each wing's face (`<wing>/__init__.py`): names resolved on first use.

A face lists the names its wing offers and the module that defines each. Importing a wing loads
none of its modules; a name loads its module when first used. So `from geoalign_store.retrieval
import score_retrieval` never pays for faiss, and a CPU score with heads=none never imports torch
(tested), while the stages still import every name from the faces.
"""

from __future__ import annotations

import importlib
import sys


def face(package: str, exports: dict[str, tuple[str, ...]]):
    """(__getattr__, __dir__, __all__) for the package `package` offering `exports`
    (module -> names defined there)."""
    home = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home[name]}"), name)
        setattr(sys.modules[package], name, value)  # later uses are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted(set(home) | set(vars(sys.modules[package])))

    return __getattr__, __dir__, sorted(home)
