"""`Heads`: the one object that turns stored descriptors into retrieval vectors with trained heads,
for fit-heads' selection, score, index and locate alike (issue 8).

A Heads is: optional per-view centring means (applied per layer: L2(L2(x) - mean)), then one or
two streams; two are fused by heads.fuse with weights (w, 1 - w) (the SPEC's fusion: inner
products are w cos_1 + (1 - w) cos_2). Stream kinds and what they read:

- ``centre``: concat of the (centred) layers, L2 (the centring candidate; no weights);
- ``isms``: ISMS on concat(layer a, layer b) (the whitening autoencoder, or PCA whitening);
- ``agra``: AGRA on layer b (the drone branch adds its expert rectification);
- ``maps``: a MapBank on the ``centre`` vector (drones mapped, satellites unchanged). Under the
  best-of-maps rule a drone image embeds as K unit vectors, shape (n, K, d), and a pair scores as
  its best map's (`vectors`); fused with a second stream, each of the K is fused with it.

On disk (heads/<name>/): centering.safetensors, one <kind>.safetensors per stream with weights,
and the recipe (`Heads.recipe()`: layers, stream kinds, weights) inside heads.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..store import load_tensors, save_tensors
from .checkpoints import save_module
from .heads import SATELLITE_VIEWS, fuse
from .map_bank import MapBank
from .release_weights import load_release_agra, load_release_isms

KINDS = ("centre", "isms", "agra", "maps")


def l2n(x: np.ndarray) -> np.ndarray:
    """Rows (the last axis) L2-normalised, bitwise as F.normalize (the heads' training and selection use it).
    torch, not numpy: multi-threaded and ~5x faster on U1652-sized blocks here (0.34 s vs 1.9 s
    for 37,854 x 2 x 1280). heads=none scoring never calls it (retrieval's raw embedding
    normalises in numpy), so it never loads torch."""
    return F.normalize(torch.from_numpy(np.ascontiguousarray(x)), dim=-1, eps=1e-12).numpy()


class Heads:
    def __init__(self, layers, means: dict | None, streams: list, weights: list[float], name: str = ""):
        if len(streams) != len(weights) or not 1 <= len(streams) <= 2:
            raise ValueError("Heads need one or two streams and one weight per stream")
        self.layers, self.means = tuple(layers), means or {}
        self.streams, self.weights = list(streams), [float(w) for w in weights]
        self.name = name          # the candidate's name in the selection, when it came from one

    def with_streams(self, streams: list, weights: list[float]) -> "Heads":
        return Heads(self.layers, self.means, streams, weights)

    @property
    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.streams]

    def describe(self) -> str:
        if self.name:
            return self.name
        if len(self.streams) == 1:
            return self.kinds[0]
        return " + ".join(f"{w:.2f} {k}" for k, w in zip(self.kinds, self.weights))

    def size(self) -> int:
        """How many numbers were fitted (centring means excluded): a model-size measure."""
        return sum(t.numel() for _, module in self.streams if module is not None
                   for t in [*module.parameters(), *module.buffers()])

    def vectors(self, view: str) -> int:
        """Vectors per image of `view`: K for drones under a best-of-maps stream (the embedding is
        (n, K, d) and a pair scores as max over the K), else 1."""
        if view in SATELLITE_VIEWS:
            return 1
        return max([getattr(module, "vectors", 1) for _, module in self.streams if module is not None], default=1)

    # ----- embedding
    def centred(self, desc: dict, view: str) -> dict:
        if not self.means:
            return {k: l2n(desc[k]) for k in self.layers}
        return {k: l2n(l2n(desc[k]) - self.means[f"{view}.layer_{k}"]) for k in self.layers}

    # what each stream kind reads of the centred layers (a, b)
    INPUT = {"agra": "layer b", "isms": "pair", "centre": "unit pair", "maps": "unit pair"}

    def stream_input(self, desc: dict, view: str, kind: str) -> np.ndarray:
        return self.input_from(self.centred(desc, view), kind)

    def input_from(self, x: dict, kind: str) -> np.ndarray:
        """What stream `kind` reads of the centred layers `x` (`self.centred`'s output)."""
        a, b = self.layers
        if self.INPUT[kind] == "layer b":
            return x[b]
        pair = np.concatenate([x[a], x[b]], axis=1)
        return pair if self.INPUT[kind] == "pair" else l2n(pair)

    @staticmethod
    def stream_output(kind: str, module, x: np.ndarray, view: str) -> torch.Tensor:
        """Stream `kind`'s output for its input `x` (call under torch.inference_mode)."""
        x = torch.from_numpy(np.ascontiguousarray(x))
        if kind == "centre":
            return x
        x = x.to(_device_of(module))    # e.g. AGRA trained on a GPU embeds there
        if kind == "isms":
            return module.embed(x).cpu()
        return module.embed(x, view).cpu()

    def combine(self, parts: list) -> np.ndarray:
        """The retrieval vectors from the streams' outputs (fused when there are two)."""
        if len(parts) == 1:
            return l2n(parts[0].float().numpy())
        first, second = parts[0].float(), parts[1].float()
        if first.ndim == 3:    # best of K maps: each mapped vector fused with the second stream
            second = second[:, None, :].expand(-1, first.shape[1], -1)
        return fuse(first, second, self.weights[0]).numpy()

    def embed(self, desc: dict, view: str) -> np.ndarray:
        with torch.inference_mode():
            return self.combine([self.stream_output(kind, module, self.stream_input(desc, view, kind), view)
                                 for kind, module in self.streams])

    __call__ = embed

    # ----- persistence
    def recipe(self) -> dict:
        return {"layers": list(self.layers), "centre": bool(self.means), "streams": self.kinds,
                "weights": self.weights, "name": self.name}

    def save(self, folder: Path) -> None:
        if self.means:
            save_tensors(folder / "centering.safetensors",
                         {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in self.means.items()})
        for kind, module in self.streams:
            if module is None:
                continue
            meta = {"dim": int(module.dim)} if kind == "agra" else {}
            save_module(folder / f"{kind}.safetensors", module, meta)

    @classmethod
    def load(cls, folder: Path, recipe: dict) -> "Heads":
        centering = folder / "centering.safetensors"
        means = ({k: v.numpy() for k, v in load_tensors(centering, _remedy(folder))[0].items()}
                 if recipe.get("centre") and centering.exists() else {})
        streams = [(kind, _load_stream(folder, kind)) for kind in recipe["streams"]]
        return cls(recipe["layers"], means, streams, recipe["weights"], recipe.get("name", ""))


def _device_of(module) -> torch.device:
    tensor = next(iter([*module.parameters(), *module.buffers()]), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _load_stream(folder: Path, kind: str):
    if kind not in KINDS:
        raise ValueError(f"unknown stream kind {kind!r} in {folder}; known: {', '.join(KINDS)}")
    if kind == "centre":
        return None
    sd, meta = load_tensors(folder / f"{kind}.safetensors", _remedy(folder))
    if kind == "agra":
        return load_release_agra(sd, int(meta["dim"]))
    if kind == "isms":
        return load_release_isms(sd)
    return MapBank.from_state_dict(sd)


def _remedy(folder: Path) -> str:
    return (f"re-run `geoalign fit-heads name={folder.name} overwrite=true` (or `import-heads` "
            "for imported weights)")


def legacy_recipe(layers, has_centering: bool, fusion_weight: float) -> dict:
    """Heads written before recipes existed (and imported release weights): AGRA + ISMS."""
    return {"layers": list(layers), "centre": has_centering, "streams": ["agra", "isms"],
            "weights": [fusion_weight, 1.0 - fusion_weight]}
