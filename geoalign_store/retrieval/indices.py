"""The store's FAISS indices (`indices/<name>/`): built once per direction's gallery, reused while
they hold the embeddings asked for. An index is reused while the fingerprint of the embeddings it
holds (features' fingerprint and content digest, heads, layers, gallery rows) and its
type/parameters are unchanged. When they changed, it is refused with the flag that rebuilds it
(overwrite=true), never silently redone. `index=ivfpq` is built shard by shard
(sharded_build.py: the parameters from the gallery's size, resumable, on `cluster=`).
"""

from __future__ import annotations

import time

from .. import store as st
from ..config import ConfigError, fingerprint, to_plain
from . import index as fx
from .embedder import embedder_inputs, gallery_fingerprint, side_embeddings


def index_name(dataset: str, embedder, ds, index_type: str) -> str:
    subset = "" if ds.subset == "all" else f"-{ds.subset.replace('=', '')}"
    return f"{dataset}-{ds.mode}-{embedder.name}-{index_type}{subset}"


def ensure_index(cfg, root, dataset, embedder, ds, device=None) -> tuple[object, dict]:
    """The index of `ds`'s gallery: loaded when up to date, else built and saved; searched
    with faiss-gpu on `device` when it is a CUDA device and faiss has GPU support."""
    name = index_name(dataset, embedder, ds, cfg.index)
    folder = st.artefact_dir(cfg.store, "indices", name)
    gallery = side_embeddings(root, dataset, embedder, ds.gallery)
    _one_vector_an_item(gallery, embedder, ds)
    if cfg.index == "ivfpq":  # any size: sharded, resumable, on cluster= (sharded_build.py)
        from .sharded_build import ensure_sharded
        index, meta = ensure_sharded(cfg, root, dataset, embedder, ds, folder, device)
        return index, {"name": name, **meta}
    gpu = fx.gpu_for(device)
    try:
        params = fx.resolve_params(cfg.index, to_plain(cfg.index_params) or {})
    except ValueError as e:
        raise ConfigError(str(e)) from None
    want = {"embeddings": gallery_fingerprint(embedder, ds), "type": cfg.index, "params": params}
    meta_path = folder / "index.json"
    if meta_path.exists() and (folder / "index.faiss").exists():
        rebuild = (f"rebuild it: `geoalign index store={cfg.store} mode={ds.mode} index={cfg.index} "
                   "overwrite=true`")
        try:
            meta = st.read_json(meta_path, rebuild)
            if meta.get("fingerprint") == fingerprint(want):
                index = fx.load_index(folder / "index.faiss", use_gpu=gpu is not None, gpu_id=gpu or 0,
                                      rebuild=rebuild)
                return index, {"name": name, "built": False, **meta}
        except st.DamagedArtefact:
            if not cfg.overwrite:
                raise
            meta = {}  # rebuilt below
        if not cfg.overwrite:
            raise st.split_damage(root, dataset, "test") or st.StoreError(
                _stale_message(folder, meta.get("spec", {}), want))
    t0 = time.perf_counter()
    index = fx.build_index(gallery, cfg.index, params, seed=int(cfg.seed),
                           use_gpu=gpu is not None, gpu_id=gpu or 0)
    fx.save_index(index, folder / "index.faiss")
    st.write_npy(folder / "gallery_rows.npy", ds.gallery.rows)  # faiss id i -> view row
    st.write_json(folder / "gallery_ids.json", [str(i) for i in ds.gallery.ids])
    meta = {"fingerprint": fingerprint(want), "spec": want, "n": len(gallery), "dim": gallery.dim,
            "gallery_view": ds.gallery.view, "config": to_plain(cfg), "dataset": dataset,
            "inputs": embedder_inputs(embedder),
            "build_s": round(time.perf_counter() - t0, 3)}
    st.write_json(meta_path, meta)
    return index, {"name": name, "built": True, **meta}


def load_built(folder, meta: dict, rerank: int = 0, rebuild: str | None = None):
    """The index `index` built in `folder` (meta: its index.json): a sharded IVF-PQ memory-mapped
    (re-ranking the top `rerank` exactly), any other read whole (a damaged file names `rebuild`)."""
    if meta.get("sharded"):
        from .sharded import load_merged
        return load_merged(folder, meta["params"]["nprobe"], rerank)
    return fx.load_index(folder / "index.faiss", **({"rebuild": rebuild} if rebuild else {}))


def _stale_message(folder, old: dict, want: dict) -> str:
    what = ("its type or parameters changed" if old.get("embeddings") == want["embeddings"] else
            "the embeddings it holds changed (features, their content, heads, layers or gallery rows)")
    return f"{folder} is stale: {what}; add overwrite=true to rebuild it"


def _one_vector_an_item(gallery, embedder, ds) -> None:
    """An index holds one vector an item; heads with the best-of-maps rule give a drone image K
    (a query's K are searched and merged, but a gallery of drones would need K rows an item)."""
    vectors = gallery.vectors
    if vectors > 1:
        raise fx.IndexConfigError(
            f"{ds.mode}'s gallery ({ds.gallery.view}) has {vectors} vectors an image under heads "
            f"{embedder.name} ({embedder.description}: a pair scores as its best map): an index holds one "
            "a gallery item. Score this direction exactly with index=flat (no FAISS index), or use "
            "mode=D2S, whose gallery (satellites) has one")
