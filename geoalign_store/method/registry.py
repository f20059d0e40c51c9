"""The heads a store holds: which exist, which a request means, whether they are stale, what they
score with. Shared by fit-heads and import-heads (claiming a folder), score, index and locate
(choosing heads) and check (staleness): the one owner of `heads/<name>/heads.json`'s meaning.
"""

from __future__ import annotations

from pathlib import Path

from .. import store as st
from ..config import ConfigError


def available_heads(store_url) -> dict[str, dict]:
    """Finished heads in the store: name -> heads.json."""
    try:
        folder = st.artefact_dir(store_url, "heads")
    except st.StoreError:  # not a local store: no heads folder
        return {}
    found = {}
    for meta_path in sorted(folder.glob("*/heads.json")) if folder.is_dir() else []:
        meta = st.read_json(meta_path, refit_hint(store_url, meta_path.parent.name))
        if meta.get("complete"):
            found[meta_path.parent.name] = meta
    return found


def refit_hint(store_url, name: str) -> str:
    return (f"refit them: `geoalign fit-heads store={store_url} name={name} overwrite=true` (or "
            "import-heads with overwrite=true for imported weights)")


def claim_heads_folder(folder: Path, wanted, overwrite: bool, other: str) -> dict | None:
    """heads/<name>/ for heads of fingerprint `wanted` (one, or a tuple of those that describe
    the same heads): its heads.json when it already holds them; None when empty, or emptied with
    `overwrite` (so no leftover - centring means, logs - mixes with new weights). Other heads
    (`other` says how they differ) are never replaced silently."""
    meta_path = folder / "heads.json"
    if not meta_path.exists():
        return None
    try:
        meta = st.read_json(meta_path, refit_hint(folder.parent.parent.parent, folder.name))
    except st.DamagedArtefact:
        if not overwrite:
            raise
        meta = {}  # replaced below, with whatever else the folder holds
    if meta.get("fingerprint") in ((wanted,) if isinstance(wanted, str) else tuple(wanted)):
        return meta
    if not overwrite:
        raise st.StoreError(f"{folder} holds {other}; add overwrite=true to replace them, or name=OTHER")
    for path in folder.iterdir():
        path.unlink()
    return None


def pick_heads(cfg, dataset: str) -> tuple[str, dict | None]:
    """(name, heads.json) of the heads `cfg.heads` means for `dataset` (auto: the store's
    `geoalign` heads, else its first; none: no heads)."""
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


def check_heads_current(root, store, dataset: str, name: str, meta: dict) -> None:
    why = heads_staleness(root, dataset, meta)
    if why and "train" in why:
        damage = st.split_damage(root, dataset, "train")
        if damage is not None:  # not a rewrite: damage changed the digest
            raise damage
    if why:
        raise st.StoreError(f"heads {name!r} are stale: {why}. Refit them: `geoalign fit-heads "
                            f"store={store} name={name} overwrite=true` (or score with heads=none)")


def heads_recipe(folder: Path, meta: dict, fusion: bool, weight) -> dict:
    """The streams and weights to score with: the recipe fit-heads chose (or, for heads from
    before recipes and imported weights, AGRA + ISMS at `fusion_weight`, 0.5 for auto);
    `fusion=false` keeps stream 1 alone, a numeric `fusion_weight` re-weights two streams."""
    from .headset import legacy_recipe  # torch: only when heads are used
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
