"""Stage `index`: FAISS indices over a direction's gallery embeddings, in `indices/<name>/`
(retrieval/indices.py: reused while up to date, refused with overwrite=true when stale).
`index=ivfpq` is sharded (retrieval/sharded_build.py): its parameters chosen from the gallery's
size, its shards added in-process or on `cluster=`, resumed where a previous run stopped."""

from __future__ import annotations

from geoalign_store.features import device_name
from geoalign_store.retrieval import ensure_index, open_direction


def run(cfg) -> dict:
    device = device_name(cfg.get("device", "auto"))
    root, dataset, embedder, sets = open_direction(cfg)
    built = []
    for ds in sets:
        _, meta = ensure_index(cfg, root, dataset, embedder, ds, device)
        built.append({"name": meta["name"], "subset": ds.subset, "n": meta["n"], "dim": meta["dim"],
                      "built": meta["built"], "build_s": meta["build_s"],
                      **{k: meta[k] for k in ("factory", "params", "timings", "shards", "files",
                                              "worker_rss_mb", "driver_rss_mb", "driver_memory_mb", "repaired",
                                              "add_devices", "gpu_fallback", "last_build") if k in meta}})
    return {"stage": "index", "store": str(cfg.store), "dataset": dataset, "mode": cfg.mode,
            "heads": embedder.name, "index": cfg.index, "indices": built}
