"""Stage `check`: read every block of every array the store holds and name what is damaged.

Feature blocks marked done are read back whole (their crc32c checksums verified; a missing chunk
file counts as damaged, since zarr would read it as zeros); the other arrays of each view (ids,
labels, flags, errors) are read too, and the artefacts' files (a sharded index's against the
sha256 recorded when each was written, its rows of vectors.npy included). Exit code 1 when
anything is damaged; the report names each view and block and the command that repairs it.
Nothing is written.
"""

from __future__ import annotations

import time
from pathlib import Path

from geoalign_store import store as st
from geoalign_store.method import available_heads, heads_staleness
from geoalign_store.retrieval import inputs_staleness, sharded_damage, sharded_recorded
from geoalign_store.store import damaged_blocks, metadata_errors, repair_hint


def check_view(root, path: str) -> dict:
    group = root[path]
    n, block_size = group.attrs.get("n"), group.attrs.get("block_size")
    try:
        done = st.read_meta(group, "block_done") if "block_done" in group else None
    except st.StoreError:
        done = None   # reported below with the other damaged metadata arrays
    damaged = damaged_blocks(group, full=True)
    info = {"n": n, "blocks": None if done is None else int(len(done)),
            "blocks_done": None if done is None else int(done.sum()),
            "complete": bool(group.attrs.get("complete", done is None or done.all())),
            "damaged": [{"block": b, "rows": _rows(b, block_size, n), "reason": why}
                        for b, why in damaged.items()],
            "metadata_damaged": metadata_errors(group)}
    if info["damaged"] or info["metadata_damaged"]:
        info["repair"] = (repair_hint(group, st.store_location(root)) if not info["metadata_damaged"]
                          else st.rewrite_view_hint(group))
    return info


def _rows(block: int, block_size, n) -> list[int] | None:
    if not block_size:
        return None
    return [block * block_size, min((block + 1) * block_size, n) - 1]


def artefacts_folder(store) -> Path | None:
    try:
        base = st.artefact_dir(store, create=False)
    except st.StoreError:  # not a local store: its artefacts are elsewhere
        return None
    return base if base.is_dir() else None


def stale_artefacts(root, store, datasets: list[str], damaged: dict) -> list[dict]:
    """Heads, indices and scores whose inputs changed since they were computed, with the command
    that recomputes each (stages refuse them until then). Damaged ones are listed apart."""
    base = artefacts_folder(store)
    if base is None or any(p.startswith("heads/") for p in damaged):
        return []  # which heads exist is unknown until their damaged files are replaced
    stale = []
    for name, meta in available_heads(store).items():
        dataset = meta.get("spec", {}).get("dataset")
        why = dataset in datasets and heads_staleness(root, dataset, meta)
        if why:
            stale.append({"artefact": f"heads/{name}", "why": why,
                          "recompute": f"geoalign fit-heads store={store} name={name} overwrite=true"})
    for meta_path in sorted(base.glob("indices/*/index.json")) + sorted(base.glob("scores/*/*/metrics.json")):
        if str(meta_path.relative_to(base)) in damaged:
            continue
        meta = st.read_json(meta_path, "")
        dataset, inputs = meta.get("dataset"), meta.get("inputs")
        if dataset not in datasets or not inputs:
            continue  # written before inputs were recorded: nothing to compare
        why = inputs_staleness(root, store, dataset, inputs)
        if why:
            stale.append({"artefact": str(meta_path.parent.relative_to(base)), "why": why,
                          "recompute": _recompute(store, meta_path, meta)})
    return stale


def _recompute(store, meta_path: Path, meta: dict) -> str:
    if meta_path.name == "index.json":
        c = meta.get("config", {})
        return f"geoalign index store={store} mode={c.get('mode')} index={c.get('index')} overwrite=true"
    return f"geoalign score store={store} --mode {meta.get('mode')} heads={meta.get('heads')}"


def run(cfg) -> dict:
    t0 = time.perf_counter()
    base = artefacts_folder(cfg.store)
    # files of sharded index builds against their recorded sha256 (vectors.npy's rows included),
    # each read once: those are not read again as FAISS indices
    artefacts = ({**st.damaged_artefacts(base, sharded_recorded(base)), **sharded_damage(base)}
                 if base is not None else {})
    bad_metadata = st.damaged_metadata(str(cfg.store))
    out = {"stage": "check", "store": str(cfg.store), "views": {}, "artefacts_damaged": artefacts,
           "metadata_documents_damaged": bad_metadata, "stale": []}
    if not bad_metadata:  # zarr cannot open what lies under damaged ones: they are reported alone
        root = st.open_store(cfg.store, mode="r")
        datasets = [st.resolve_dataset(root, cfg.dataset)] if cfg.dataset else st.list_datasets(root)
        out["views"] = {path: check_view(root, path) for path in st.list_views(root)
                        if path.split("/")[1] in datasets}
        out["stale"] = stale_artefacts(root, cfg.store, datasets, artefacts)
    n_damaged = (sum(len(v["damaged"]) + len(v["metadata_damaged"]) for v in out["views"].values())
                 + len(bad_metadata) + len(artefacts))
    return {**out, "n_damaged": n_damaged, "ok": n_damaged == 0,
            "wall_s": round(time.perf_counter() - t0, 3)}
