"""What `index` and `score` share: the dataset, the embedder and the direction sets they read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from geoalign_store import store as st
from geoalign_store.checkpoints import load_tensors
from geoalign_store.config import ConfigError, fingerprint
from geoalign_store.embeddings import (DirectionSet, StoredEmbeddings, direction_sets, l2n,
                                       raw_embedding)
from geoalign_store.heads import fuse, load_release_agra, load_release_isms


@dataclass
class Embedder:
    name: str                                   # "none" or the heads' name
    layers: list[int]
    embed: Callable
    spec: dict                                  # what decides the vectors (for fingerprints)


def resolve_layers(root, dataset: str, layers) -> list[int]:
    """Requested layers as stored (negative indices counted from the backbone's depth)."""
    spec = root[f"{st.FEATURES}/{dataset}"].attrs.get("fingerprint", {}).get("spec", {})
    depth = (spec.get("arch") or {}).get("num_hidden_layers")
    resolved = [k + depth if (k < 0 and depth) else k for k in layers]
    have = st.read_view_layers(root, dataset, "test", "drone")
    missing = [k for k in resolved if k not in have]
    if missing:
        raise st.StoreError(f"layers {missing} are not in the store's {dataset} features "
                            f"(stored: {have}); pass layers= among them")
    return resolved


def available_heads(store_url) -> dict[str, dict]:
    """Finished heads in the store: name -> heads.json."""
    folder = Path(str(store_url).removeprefix("file://")) / "heads"
    found = {}
    for meta_path in sorted(folder.glob("*/heads.json")) if folder.is_dir() else []:
        meta = json.loads(meta_path.read_text())
        if meta.get("complete"):
            found[meta_path.parent.name] = meta
    return found


def claim_heads_folder(folder: Path, wanted: str, overwrite: bool, other: str) -> dict | None:
    """heads/<name>/ for heads of fingerprint `wanted`: its heads.json when it already holds
    them; None when empty, or emptied with `overwrite` (so no leftover - centring means, logs -
    mixes with new weights). Other heads (`other` says how they differ) are never replaced
    silently."""
    meta_path = folder / "heads.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("fingerprint") == wanted:
        return meta
    if not overwrite:
        raise st.StoreError(f"{folder} holds {other}; add overwrite=true to replace them, or name=OTHER")
    for path in folder.iterdir():
        path.unlink()
    return None


def _pick_heads(cfg, dataset: str) -> tuple[str, dict | None]:
    heads = "none" if cfg.heads is None else str(cfg.heads)
    if heads == "none":
        return "none", None
    found = {k: v for k, v in available_heads(cfg.store).items() if v["spec"]["dataset"] == dataset}
    if heads == "auto":
        if not found:
            return "none", None
        heads = "geoalign" if "geoalign" in found else sorted(found)[0]
    if heads not in found:
        raise st.StoreError(f"heads={heads!r}: no finished heads of that name for {dataset} in the "
                            f"store (found: {', '.join(found) or 'none'}); run fit-heads or "
                            "import-heads, or use heads=none")
    return heads, found[heads]


def resolve_embedder(root, cfg, dataset: str) -> Embedder:
    features = root[f"{st.FEATURES}/{dataset}"].attrs.get("fingerprint", {}).get("hash")
    name, meta = _pick_heads(cfg, dataset)
    if meta is None:
        layers = resolve_layers(root, dataset, list(cfg.layers))
        return Embedder("none", layers, raw_embedding,
                        {"features": features, "heads": "none", "layers": layers})
    layers = list(meta["spec"]["layers"])  # heads read the layers they were trained on
    resolve_layers(root, dataset, layers)
    folder = st.artefact_dir(cfg.store, "heads", name)
    weight = fusion_weight(cfg.fusion_weight, meta)
    embed = HeadsEmbedding(folder, layers, bool(cfg.fusion), weight)
    return Embedder(name, layers, embed, {"features": features, "heads": name,
                                          "heads_fingerprint": meta["fingerprint"], "layers": layers,
                                          "fusion": bool(cfg.fusion), "fusion_weight": weight})


def fusion_weight(value, meta: dict) -> float:
    """`auto`: the weight fit-heads chose on held-out flights (heads.json), 0.5 (the paper's)
    for heads without one (imported, or preset=paper)."""
    if str(value) == "auto":
        return float(meta.get("fusion_weight", 0.5))
    try:
        weight = float(value)
    except (TypeError, ValueError):
        weight = -1.0
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"fusion_weight must be auto or a number in [0, 1], got {value!r}")
    return weight


class HeadsEmbedding:
    """Stream 1 (AGRA on layer b; the drone branch adds its expert rectification), fused with
    stream 2 (ISMS on concat(a, b)) unless fusion=false."""

    def __init__(self, folder: Path, layers: list[int], fusion: bool, weight: float):
        agra_sd, meta = load_tensors(folder / "agra.safetensors")
        self.agra = load_release_agra(agra_sd, int(meta["dim"]))
        has_isms = (folder / "isms.safetensors").exists()
        if fusion and not has_isms:
            raise st.StoreError(f"{folder} has no ISMS weights (stream 2); score with fusion=false")
        self.isms = load_release_isms(load_tensors(folder / "isms.safetensors")[0]) if fusion else None
        self.layers, self.weight = layers, weight
        centering = folder / "centering.safetensors"
        self.means = {k: v.numpy() for k, v in load_tensors(centering)[0].items()} if centering.exists() else {}

    def _center(self, layer_desc: dict, view: str) -> dict:
        if not self.means:
            return layer_desc
        return {k: l2n(l2n(x) - self.means[f"{view}.layer_{k}"]) for k, x in layer_desc.items()}

    def __call__(self, layer_desc: dict, view: str) -> np.ndarray:
        layer_desc = self._center(layer_desc, view)
        a, b = self.layers
        with torch.inference_mode():
            s1 = self.agra.embed(torch.from_numpy(l2n(layer_desc[b])), view)
            if self.isms is None:
                return s1.numpy()
            x2 = np.concatenate([l2n(layer_desc[a]), l2n(layer_desc[b])], axis=1)
            return fuse(s1, self.isms.embed(torch.from_numpy(x2)), self.weight).numpy()


def open_direction(cfg, mode: str | None = None):
    """(store root, dataset, embedder, direction sets) of the requested scoring direction."""
    root = st.open_store(cfg.store, mode="r+")
    dataset = st.resolve_dataset(root, cfg.dataset)
    embedder = resolve_embedder(root, cfg, dataset)
    protocol = cfg.get("gallery_protocol", "official")
    return root, dataset, embedder, direction_sets(root, dataset, mode or cfg.mode, protocol)


def side_embeddings(root, dataset: str, embedder: Embedder, side) -> StoredEmbeddings:
    return StoredEmbeddings(root, dataset, "test", side, embedder.layers, embedder.embed)


def gallery_fingerprint(embedder: Embedder, ds: DirectionSet) -> str:
    return fingerprint({**embedder.spec, "view": ds.gallery.view, "subset": ds.subset,
                        "rows": fingerprint(ds.gallery.rows.tolist())})
