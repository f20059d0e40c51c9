"""What index, score and locate share: the embedder (stored descriptors -> retrieval vectors, raw
or through the store's heads), the direction sets they read, and what their artefacts record of
both (to know when the store has moved on since)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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


def resolve_embedder(root, cfg, dataset: str) -> Embedder:
    features = st.features_fingerprint(root, dataset)
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
