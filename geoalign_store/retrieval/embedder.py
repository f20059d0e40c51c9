"""What index, score and locate share: the embedder (stored descriptors -> retrieval vectors, raw
or through the store's heads), the direction sets they read, and what their artefacts record of
both (to know when the store has moved on since)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import store as st
from ..config import fingerprint
from ..method import available_heads, check_heads_current, heads_recipe, heads_staleness, pick_heads
from .embeddings import DirectionSet, StoredEmbeddings, direction_sets, raw_embedding

IN_MEMORY_BYTES = 1 << 30  # galleries above this stay in the store and are streamed (score, locate)


@dataclass
class Embedder:
    name: str                                   # "none" or the heads' name
    layers: list[int]
    embed: Callable
    spec: dict                                  # what decides the vectors (for fingerprints)
    description: str = "raw descriptors"        # what the heads are (e.g. "centre", "ridge(1)")


# What decides a descriptor's values (extract's feature_spec): heads fitted on one store's
# features serve another's only when all of these are equal.
FEATURE_FIELDS = ("backbone", "arch", "weights_sha256", "layers", "image_size", "normalisation", "pooling",
                  "stage_version")


def foreign_heads(heads) -> tuple[str, str] | None:
    """(store, name) of `heads=STORE:NAME`: heads fitted in another store; None otherwise."""
    text = "" if heads is None else str(heads)
    store, sep, name = text.rpartition(":")
    return (store, name) if sep and store and name and "/" not in name else None


def features_differ(root, dataset: str, other_root, other_dataset: str) -> list[str]:
    """The fields of how features were made that differ between two stores' datasets."""
    spec = lambda r, d: r[f"{st.FEATURES}/{d}"].attrs.get("fingerprint", {}).get("spec", {})  # noqa: E731
    ours, theirs = spec(root, dataset), spec(other_root, other_dataset)
    return [f"{k} ({theirs.get(k)!r} there, {ours.get(k)!r} here)" for k in FEATURE_FIELDS if ours.get(k) != theirs.get(k)]


def _foreign_embedder(root, cfg, dataset: str, other: str, name: str) -> Embedder:
    """Heads fitted on another store's train split (e.g. a benchmark's), refused unless both
    stores' features were made the same way (FEATURE_FIELDS) and the heads are current there."""
    meta = available_heads(other).get(name)
    if meta is None:
        raise st.StoreError(f"heads={cfg.heads}: no finished heads {name!r} in {other} "
                            f"(found: {', '.join(available_heads(other)) or 'none'})")
    other_root, other_dataset = st.open_store(other, mode="r"), meta["spec"]["dataset"]
    differ = features_differ(root, dataset, other_root, other_dataset)
    if differ:
        raise st.StoreError(f"heads={cfg.heads} were fitted on features made differently from {dataset}'s: "
                            + "; ".join(differ) + ". Extract both the same way, or use heads=none")
    check_heads_current(other_root, other, other_dataset, name, meta)
    layers = list(meta["spec"]["layers"])
    st.stored_layers(root, dataset, layers)
    from ..method import Heads  # torch: only when heads are used
    folder = st.artefact_dir(other, "heads", name)
    recipe = heads_recipe(folder, meta, bool(cfg.fusion), cfg.fusion_weight)
    spec = {"features": st.features_fingerprint(root, dataset), "heads": name, "heads_store": str(other),
            "heads_fingerprint": meta["fingerprint"], "layers": layers, "recipe": recipe,
            "fusion": len(recipe["streams"]) > 1, "test_content": st.content_digest(root, dataset, "test", layers)}
    if spec["fusion"]:
        spec["fusion_weight"] = recipe["weights"][0]
    heads = Heads.load(folder, recipe)   # named for folders: the other store's folder name, then the heads'
    label = f"{Path(str(other).rstrip('/')).name}.{name}"
    return Embedder(label, layers, heads.embed, spec, heads.describe() + f" (from {other})")


def resolve_embedder(root, cfg, dataset: str) -> Embedder:
    features = st.features_fingerprint(root, dataset)
    if (foreign := foreign_heads(cfg.heads)) is not None:
        return _foreign_embedder(root, cfg, dataset, *foreign)
    name, meta = pick_heads(cfg, dataset)
    if meta is None:
        layers = st.stored_layers(root, dataset, list(cfg.layers))
        return Embedder("none", layers, raw_embedding,
                        {"features": features, "heads": "none", "layers": layers,
                         "test_content": st.content_digest(root, dataset, "test", layers)})
    layers = list(meta["spec"]["layers"])  # heads read the layers they were trained on
    st.stored_layers(root, dataset, layers)
    check_heads_current(root, cfg.store, dataset, name, meta)
    from ..method import Heads  # torch: only when heads are used
    folder = st.artefact_dir(cfg.store, "heads", name)
    recipe = heads_recipe(folder, meta, bool(cfg.fusion), cfg.fusion_weight)
    heads = Heads.load(folder, recipe)
    spec = {"features": features, "heads": name, "heads_fingerprint": meta["fingerprint"],
            "layers": layers, "recipe": recipe, "fusion": len(recipe["streams"]) > 1,
            "test_content": st.content_digest(root, dataset, "test", layers)}
    if spec["fusion"]:
        spec["fusion_weight"] = recipe["weights"][0]
    return Embedder(name, layers, heads.embed, spec, heads.describe())


def embedder_inputs(embedder: Embedder) -> dict:
    """What an index or a score was computed from, recorded beside it for `geoalign check`."""
    inputs = {k: embedder.spec.get(k) for k in ("features", "test_content", "heads", "heads_fingerprint", "layers")}
    if "heads_store" in embedder.spec:  # heads=STORE:NAME
        inputs["heads_store"] = embedder.spec["heads_store"]
    return inputs


def inputs_staleness(root, store, dataset: str, inputs: dict) -> str | None:
    """Why an index or score no longer matches the store (None when it does)."""
    fp = st.features_fingerprint(root, dataset)
    if inputs.get("features") != fp:
        return "the features' fingerprint changed"
    if inputs.get("test_content") != st.content_digest(root, dataset, "test", inputs["layers"]):
        return "the test descriptors changed"
    heads = inputs.get("heads")
    if heads and heads != "none":
        store = inputs.get("heads_store", store)   # heads=STORE:NAME: looked up where they live
        meta = available_heads(store).get(heads)
        if meta is None or meta.get("fingerprint") != inputs.get("heads_fingerprint"):
            return f"heads {heads!r} were refitted or removed"
        if "heads_store" in inputs:
            other = st.open_store(store, mode="r")
            if heads_staleness(other, meta["spec"]["dataset"], meta):
                return f"heads {heads!r} of {store} are stale"
        elif heads_staleness(root, dataset, meta):
            return f"heads {heads!r} are stale"
    return None


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
                        "rows": rows_fingerprint(ds.gallery.selection)})


def rows_fingerprint(rows, chunk: int = 1 << 18) -> str:
    """fingerprint(rows.tolist()) (the sha256 of the JSON list "[0,1,...]"), hashed chunk by chunk:
    the whole list's text took 300 MB at 1e7 rows, a chunk of 2^20 rows 100 MB. `rows`: an
    array, or a side's selection (store.RowSelection: its rows read a chunk at a time from the
    store, never held whole)."""
    digest = hashlib.sha256(b"[")
    for start in range(0, len(rows), chunk):
        part = ",".join(map(str, rows[start:start + chunk].tolist()))
        digest.update((("," if start else "") + part).encode())
    digest.update(b"]")
    return digest.hexdigest()
