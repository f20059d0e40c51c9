"""What `index` and `score` share: the dataset, the embedder and the direction sets they read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from geoalign_store import store as st
from geoalign_store.config import ConfigError, fingerprint
from geoalign_store.embeddings import DirectionSet, StoredEmbeddings, direction_sets, raw_embedding

IN_MEMORY_BYTES = 1 << 30  # galleries above this stay in the store and are streamed (score, locate)

@dataclass
class Embedder:
    name: str                                   # "none" or the heads' name
    layers: list[int]
    embed: Callable
    spec: dict                                  # what decides the vectors (for fingerprints)
    description: str = "raw descriptors"        # what the heads are (e.g. "centre", "ridge(1)")


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
    try:
        folder = st.artefact_dir(store_url, "heads")
    except st.StoreError:  # not a local store: no heads folder
        return {}
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
    features = st.features_fingerprint(root, dataset)
    name, meta = _pick_heads(cfg, dataset)
    if meta is None:
        layers = resolve_layers(root, dataset, list(cfg.layers))
        return Embedder("none", layers, raw_embedding,
                        {"features": features, "heads": "none", "layers": layers,
                         "test_content": st.content_digest(root, dataset, "test", layers)})
    layers = list(meta["spec"]["layers"])  # heads read the layers they were trained on
    resolve_layers(root, dataset, layers)
    check_heads_current(root, cfg.store, dataset, name, meta)
    from geoalign_store.headset import Heads  # torch: only when heads are used
    folder = st.artefact_dir(cfg.store, "heads", name)
    recipe = heads_recipe(folder, meta, bool(cfg.fusion), cfg.fusion_weight)
    heads = Heads.load(folder, recipe)
    spec = {"features": features, "heads": name, "heads_fingerprint": meta["fingerprint"],
            "layers": layers, "recipe": recipe, "fusion": len(recipe["streams"]) > 1,
            "test_content": st.content_digest(root, dataset, "test", layers)}
    if spec["fusion"]:
        spec["fusion_weight"] = recipe["weights"][0]
    return Embedder(name, layers, heads.embed, spec, heads.describe())


def heads_staleness(root, dataset: str, meta: dict) -> str | None:
    """Why heads no longer fit the store's features (None when they do): fitted heads record the
    features' fingerprint and the digest of the train content they read."""
    spec = meta.get("spec", {})
    if "imported" in spec:
        return None  # the paper's weights: fitted elsewhere, only their width is checked
    now = st.features_fingerprint(root, dataset)
    if spec.get("features") is not None and spec.get("features") != now:
        return ("they were fitted on features made differently (the features' fingerprint changed: "
                "backbone, weights, layers or simulator settings)")
    if "train_content" in spec and spec["train_content"] != st.content_digest(root, dataset, "train", spec["layers"]):
        return "the store's train descriptors changed since they were fitted"
    return None


def embedder_inputs(embedder: Embedder) -> dict:
    """What an index or a score was computed from, recorded beside it for `geoalign check`."""
    return {k: embedder.spec.get(k) for k in ("features", "test_content", "heads", "heads_fingerprint", "layers")}


def inputs_staleness(root, store, dataset: str, inputs: dict) -> str | None:
    """Why an index or score no longer matches the store (None when it does)."""
    fp = st.features_fingerprint(root, dataset)
    if inputs.get("features") != fp:
        return "the features' fingerprint changed"
    if inputs.get("test_content") != st.content_digest(root, dataset, "test", inputs["layers"]):
        return "the test descriptors changed"
    heads = inputs.get("heads")
    if heads and heads != "none":
        meta = available_heads(store).get(heads)
        if meta is None or meta.get("fingerprint") != inputs.get("heads_fingerprint"):
            return f"heads {heads!r} were refitted or removed"
        if heads_staleness(root, dataset, meta):
            return f"heads {heads!r} are stale"
    return None


def check_heads_current(root, store, dataset: str, name: str, meta: dict) -> None:
    why = heads_staleness(root, dataset, meta)
    if why:
        raise st.StoreError(f"heads {name!r} are stale: {why}. Refit them: `geoalign fit-heads "
                            f"store={store} name={name} overwrite=true` (or score with heads=none)")


def heads_recipe(folder: Path, meta: dict, fusion: bool, weight) -> dict:
    """The streams and weights to score with: the recipe fit-heads chose (or, for heads from
    before recipes and imported weights, AGRA + ISMS at `fusion_weight`, 0.5 for auto);
    `fusion=false` keeps stream 1 alone, a numeric `fusion_weight` re-weights two streams."""
    from geoalign_store.headset import legacy_recipe
    w = fusion_weight(weight, meta)   # checked whatever the recipe
    recipe = dict(meta.get("recipe") or legacy_recipe(
        meta["spec"]["layers"], (folder / "centering.safetensors").exists(), w))
    if not fusion:
        recipe.update(streams=recipe["streams"][:1], weights=[1.0])
    elif len(recipe["streams"]) == 2 and str(weight) != "auto":
        recipe["weights"] = [w, 1.0 - w]
    if "isms" in recipe["streams"] and not (folder / "isms.safetensors").exists():
        raise st.StoreError(f"{folder} has no ISMS weights (stream 2); score with fusion=false")
    return recipe


def fusion_weight(value, meta: dict) -> float:
    """`auto`: the recipe's own weight (0.5, the paper's, for heads without one)."""
    if str(value) == "auto":
        return float(meta.get("fusion_weight", 0.5))
    try:
        weight = float(value)
    except (TypeError, ValueError):
        weight = -1.0
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"fusion_weight must be auto or a number in [0, 1], got {value!r}")
    return weight


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
