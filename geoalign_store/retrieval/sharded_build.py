"""`index=ivfpq` at any size: a direction's gallery indexed shard by shard, in-process or as one
dask task per shard on `cluster=` (local:N or a scheduler address, the engine extract uses).

A build in `indices/<name>/` is resumable: `build.json` (what is being built) is written first,
then `trained.faiss`, then each shard whole with its mark; a rerun redoes only the shards without
a mark, so a killed driver or worker changes nothing (a task run twice writes the same bytes).
Refused (StoreError, exit 2) and named: a build or index of other embeddings or parameters (the
gallery changed: the rebuild command is given), a damaged shard or trained index (removed; the
rerun rebuilds it). A merged index whose files lost their recorded size is merged again from its
shards. `verify=true` reads every file back against its recorded sha256 first, the shards' rows
of vectors.npy included (shard_integrity.py), and redoes what differs. No process holds the
gallery: the driver holds the training sample (at d_out dimensions), a task one chunk of its shard.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from .. import store as st
from ..config import file_sha256, fingerprint, to_plain
from . import shard_integrity as integrity
from . import sharded as sh
from .embedder import embedder_inputs, gallery_fingerprint, resolve_embedder, side_embeddings
from .embeddings import DirectionSet, gallery_side
from ..features import dask_client, local_worker_devices, local_workers
from .index import gpu_available, gpu_for, save_index
from .ivf_rule import build_params, choose_ivfpq, factory_string

SHARD_ROWS = 131072


def ensure_sharded(cfg, root, dataset, embedder, ds, folder: Path, device=None):
    """(ShardedIndex, meta) of ds's gallery: loaded when built for these embeddings and
    parameters, else built (resuming what a previous run finished) and merged."""
    gallery = side_embeddings(root, dataset, embedder, ds.gallery)
    params = choose_ivfpq(len(gallery), gallery.dim, to_plain(cfg.index_params) or {})
    want = {"embeddings": gallery_fingerprint(embedder, ds), "type": "ivfpq",
            "params": build_params(params), "seed": int(cfg.seed)}
    fp, rerank = fingerprint(want), int(cfg.get("rerank", 0) or 0)
    repaired = _verified(folder, fp) if cfg.get("verify") else {}
    meta = integrity.read_record(folder / "index.json")
    if meta.get("fingerprint") == fp and _merged_intact(folder, meta):
        return sh.load_merged(folder, params["nprobe"], rerank), _as_it_stands(meta, params)
    _refuse_or_clear(cfg, folder, fp, meta, embedder, ds)
    t0 = time.perf_counter()
    built = {**_build(cfg, folder, gallery, params, want, embedder, dataset, ds, device), "repaired": repaired}
    meta = {"fingerprint": fp, "spec": want, "sharded": True, "params": params,
            "factory": factory_string(params, gallery.dim), "n": len(gallery), "dim": gallery.dim,
            "gallery_view": ds.gallery.view, "config": to_plain(cfg), "dataset": dataset,
            "inputs": embedder_inputs(embedder), "build_s": round(time.perf_counter() - t0, 3), **built}
    st.write_json(folder / "index.json", meta)
    return sh.load_merged(folder, params["nprobe"], rerank), {"built": True, **meta}


LAST_BUILD = ("build_s", "timings", "shards", "add_devices", "gpu_fallback", "worker_rss_mb", "driver_rss_mb",
              "driver_memory_mb")   # what index.json says of the build that made the index


def _as_it_stands(meta: dict, params: dict) -> dict:
    """What is true of an index reused as it is (meta: its index.json): searched with this
    run's parameters (nprobe is not built in), every shard reused, nothing trained, added or
    merged now; the figures of the build that made it under `last_build`."""
    last = {k: meta[k] for k in LAST_BUILD if k in meta}
    shards = meta.get("shards", {})
    return {**{k: v for k, v in meta.items() if k not in last}, "build_s": meta.get("build_s", 0.0),
            "built": False, "params": params, "repaired": {}, "add_devices": {},
            "shards": {**shards, "built": 0, "reused": shards.get("n", 0)},
            "timings": {"train_s": 0.0, "add_s": 0.0, "merge_s": 0.0}, "last_build": last}


def _verified(folder: Path, fp: str) -> dict[str, str]:
    """verify=true: every file of this very build read back against its record; what differs
    is removed, so that the build below redoes it. -> {what was damaged: why}."""
    if integrity.read_record(folder / "build.json").get("fingerprint") != fp:
        return {}   # a build of something else: refused or cleared below, not repaired
    damaged = integrity.damage(folder)
    integrity.clear_damaged(folder, damaged)
    return damaged


def _merged_intact(folder: Path, meta: dict) -> bool:
    files = meta.get("files", {})
    return bool(files) and all((folder / name).is_file() and (folder / name).stat().st_size == f["bytes"]
                               for name, f in files.items())


def rerun_command(cfg, embedder, ds) -> str:
    """The command that asks for this very build again (what resumes or verifies it)."""
    extra = [f"dataset={cfg.dataset}"] if cfg.get("dataset") else []
    layers = ",".join(str(int(v)) for v in (cfg.get("layers") or embedder.layers))
    extra += [f"mode={ds.mode}", f"heads={embedder.name}", f"'layers=[{layers}]'", "index=ivfpq"]
    params = to_plain(cfg.get("index_params")) or {}
    if params:
        extra.append("'index_params={" + ", ".join(f"{k}: {v}" for k, v in params.items()) + "}'")
    if int(cfg.get("seed", 0)):
        extra.append(f"seed={cfg.seed}")
    if int(cfg.get("shard_rows", SHARD_ROWS)) != SHARD_ROWS:   # which shards a rerun finds done
        extra.append(f"shard_rows={cfg.shard_rows}")
    return f"geoalign index store={cfg.store} " + " ".join(extra)


def rebuild_command(cfg, embedder, ds) -> str:
    return rerun_command(cfg, embedder, ds) + " overwrite=true"


def _refuse_or_clear(cfg, folder: Path, fp: str, meta: dict, embedder, ds) -> None:
    """A finished index or a build of something else: refused unless overwrite=true (then the
    folder is emptied); a build of this very index is resumed."""
    build = integrity.read_record(folder / "build.json")
    other = [m for m in (meta, build) if m.get("fingerprint") not in (None, fp)]
    if not other:
        return
    if not cfg.overwrite:
        old = other[0].get("spec", {})
        what = ("its parameters changed" if old.get("embeddings") == gallery_fingerprint(embedder, ds)
                else "the gallery changed since its shards were written (features, their content, "
                     "heads, layers or gallery rows)")
        raise st.StoreError(f"{folder} is stale: {what}; rebuild it with: {rebuild_command(cfg, embedder, ds)}")
    shutil.rmtree(folder)
    folder.mkdir(parents=True)


def _build(cfg, folder, gallery, params, want, embedder, dataset, ds, device) -> dict:
    gpu, devices = gpu_for(device), _worker_devices(cfg)   # refused here before anything is written
    n, d = gallery.shape
    memory = {"opened": sh.memory_mb()}   # the driver's, after each phase: which one holds what
    if not (folder / "build.json").exists():
        st.write_json(folder / "build.json", {"fingerprint": fingerprint(want), "spec": want, "n": n, "dim": d,
                                              "rerun": rerun_command(cfg, embedder, ds)})
        # faiss id i -> view row, written a chunk at a time (never held whole); the names stay in
        # the store (a JSON of 1e7 names took 1 GB of the driver's memory to write)
        st.write_npy_chunks(folder / "gallery_rows.npy", np.int64, len(ds.gallery), _row_chunks(ds.gallery.selection))
    train_parts: dict = {}
    timings = {"train_s": _trained(folder, gallery, params, int(cfg.seed), gpu, train_parts),
               "train_parts": train_parts}
    memory["trained"] = sh.memory_mb()
    _vectors(folder, n, d)
    plan = sh.plan_shards(n, int(cfg.get("shard_rows", SHARD_ROWS)))
    pending = _pending_shards(folder, plan)
    if cfg.get("cluster"):
        source = {"folder": str(folder), "store": str(Path(str(cfg.store)).resolve()), "dataset": dataset,
                  "view": ds.gallery.view, "mode": ds.mode, "subset": ds.subset,
                  "embeddings": want["embeddings"], "heads": embedder.name, "layers": embedder.layers,
                  "fusion": bool(cfg.get("fusion", True)), "fusion_weight": cfg.get("fusion_weight", "auto"),
                  "device": device}
        added, merged = _on_cluster(cfg.cluster, devices, folder, pending, plan, source, timings)
        files = merged.pop("files")
        added = added + [merged]
    else:
        t0 = time.perf_counter()
        added = [sh.add_shard(folder, a, b, gallery, gpu) for a, b in pending]
        timings["add_s"] = round(time.perf_counter() - t0, 3)
        memory["added"] = sh.memory_mb()
        t0 = time.perf_counter()
        files = sh.merge(folder, plan)
        timings["merge_s"] = round(time.perf_counter() - t0, 3)
    memory["merged"] = sh.memory_mb()
    workers = {}
    for item in added:
        workers[str(item["pid"])] = max(workers.get(str(item["pid"]), 0), item["rss_mb"])
    return {"files": files, "timings": timings, "worker_rss_mb": workers, "driver_rss_mb": sh.peak_rss_mb(),
            "driver_memory_mb": memory, **_add_devices(added),
            "shards": {"n": len(plan), "built": len(pending), "reused": len(plan) - len(pending),
                       "rows": int(cfg.get("shard_rows", SHARD_ROWS))}}


def _trained(folder: Path, gallery, params: dict, seed: int, gpu, parts: dict) -> float:
    """Seconds spent training (0 when trained.faiss is reused: its sha256 is checked)."""
    path, build = folder / "trained.faiss", integrity.read_record(folder / "build.json")
    if path.exists() and build.get("trained_sha256"):
        if file_sha256(path) == build["trained_sha256"]:
            return 0.0
        for stale in [path, *(folder / "shards").glob("shard-*")]:
            stale.unlink()
        raise st.StoreError(f"{path} is damaged (its sha256 is not the one recorded when it was "
                            "written); it was removed with the shards made from it: rerun the same "
                            "command to rebuild it")
    t0 = time.perf_counter()
    save_index(sh.train(gallery, params, seed, gpu, parts, scratch=folder), path)
    st.write_json(folder / "build.json", {**build, "trained_sha256": file_sha256(path)})
    return round(time.perf_counter() - t0, 3)


def _vectors(folder: Path, n: int, d: int) -> None:
    """vectors.npy, the full embeddings for re-ranking: created once (sparse), filled by shards."""
    path = folder / "vectors.npy"
    if path.exists():
        return
    tmp = folder / ".vectors.npy.tmp"
    np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d)).flush()
    tmp.replace(path)


def _pending_shards(folder: Path, plan: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Shards of `plan` without a valid mark; an unmarked shard file (killed between writing it
    and its mark) is redone; a marked one whose size or sha256 changed is removed and refused."""
    for tmp in (folder / "shards").glob(".shard-*.tmp-*"):
        tmp.unlink(missing_ok=True)
    pending = []
    for a, b in plan:
        path = sh.shard_path(folder, a, b)
        mark = integrity.read_record(path.with_suffix(".json"))
        if not mark:
            path.with_suffix(".json").unlink(missing_ok=True)
            pending.append((a, b))
            continue
        why = integrity.file_damage(path, mark.get("sha256"), mark.get("bytes"))
        if why:
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
            raise st.StoreError(f"shard {path} is damaged ({why}); it was removed: rerun the same "
                                f"command to rebuild it (the other finished shards are kept)")
    return pending


def _worker_devices(cfg) -> list[str] | None:
    """What each `cluster=local:N` worker adds on: one GPU each, as extract's workers
    (features.local_worker_devices), when this faiss can use GPUs at all."""
    n = local_workers(cfg.get("cluster"))
    return local_worker_devices(n, cfg.get("device", "auto")) if n and gpu_available() else None


def _add_devices(added: list[dict]) -> dict:
    """{"add_devices": {device: shards added there}} and, where a GPU shard went to the CPU,
    {"gpu_fallback": why} (the first reason; they repeat)."""
    counts: dict[str, int] = {}
    for item in added:
        if "added_on" in item:   # the merge's item has none
            counts[item["added_on"]] = counts.get(item["added_on"], 0) + 1
    why = next((item["gpu_fallback"] for item in added if item.get("gpu_fallback")), None)
    return {"add_devices": counts, **({"gpu_fallback": why} if why else {})}


def _on_cluster(address, devices, folder: Path, pending, plan, source: dict, timings: dict) -> tuple[list[dict], dict]:
    """The pending shards added by one task each, then the merge by one more: a worker, not
    the driver, touches the merged lists (their memory-mapped pages: 780 MB at 1e7, counted
    in the resident memory of whichever process writes them). -> (shard marks, merge's).
    devices: each local worker's own (worker_devices.DevicePerWorker), as extract's."""
    from distributed import as_completed
    with dask_client(address, devices) as (client, threads):
        t0 = time.perf_counter()
        futures = [client.submit(shard_task, source, a, b, threads, pure=False) for a, b in pending]
        added = [f.result() for f in as_completed(futures)]
        timings["add_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        merged = client.submit(merge_task, str(folder), plan, pure=False).result()
        timings["merge_s"] = round(time.perf_counter() - t0, 3)
    return added, merged


def merge_task(folder: str, plan: list) -> dict:
    """One dask task: the shards merged (sharded.merge; rerunning it redoes the same merge)."""
    files = sh.merge(Path(folder), [tuple(p) for p in plan])
    return {"files": files, "pid": os.getpid(), "rss_mb": sh.peak_rss_mb()}


_WORKER_GALLERIES: dict = {}


def shard_task(source: dict, start: int, stop: int, threads: int | None = None) -> dict:
    """One dask task: rows [start, stop) of the gallery embedded (heads applied here, in the
    worker) and added to a copy of the trained index, on this worker's own GPU when it has one
    (its DevicePerWorker device, else the driver's); the shard written under the store."""
    import faiss
    from ..features import worker_device   # dask's modules: only where dask runs
    if threads:
        faiss.omp_set_num_threads(threads)
    key = (source["folder"], source["embeddings"])
    if key not in _WORKER_GALLERIES:
        _WORKER_GALLERIES[key] = worker_gallery(source)
    gpu = gpu_for(worker_device() or source.get("device"))
    return sh.add_shard(Path(source["folder"]), start, stop, _WORKER_GALLERIES[key], gpu)


def _row_chunks(selection, chunk: int = 1 << 18):
    for start in range(0, len(selection), chunk):
        yield selection[start:start + chunk]


def worker_gallery(source: dict):
    """The driver's gallery embeddings rebuilt in a worker from the store (its rows' selection:
    nothing a gallery row long held here either), checked to be the very embeddings the build
    is for (its fingerprint)."""
    from omegaconf import OmegaConf
    root = st.open_store(source["store"], mode="r")
    request = OmegaConf.create({k: source[k] for k in ("heads", "fusion", "fusion_weight", "layers")}
                               | {"store": source["store"]})
    embedder = resolve_embedder(root, request, source["dataset"])
    gallery = gallery_side(root, source["dataset"], source["mode"], source["subset"])
    if gallery_fingerprint(embedder, DirectionSet(source["mode"], source["subset"], None, gallery)) != source["embeddings"]:
        raise RuntimeError(f"the store changed under the build of {source['folder']}: a worker's "
                           "gallery embeddings are not the ones the build is for")
    return side_embeddings(root, source["dataset"], embedder, gallery)
