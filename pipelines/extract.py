"""Stage `extract`: images -> the fingerprinted, resumable Zarr feature store (SPEC §2-3)."""

from __future__ import annotations

import time
from pathlib import Path

from geoalign_store import store as st
from geoalign_store.config import ConfigError, fingerprint, to_plain
from geoalign_store.datasets import (CoordinatesError, coordinates_for, list_dataset, read_locations_csv,
                                     resolve_data_root)
from geoalign_store.features import (ARCH_KEYS, SKIPPED, BlockJob, Clock, EncodeOptions, GEM_EPS, GEM_P,
                                     MapInputs, auto_workers, block_task, dask_client, device_name, image_hw,
                                     load_backbone, local_worker_devices, local_workers, plan_jobs, plan_tile_jobs, resolve_backbone,
                                     resolve_layers, run_in_process, weights_fingerprint)
from geoalign_store.report import console, progress_bar

STAGE_VERSION = 1


def feature_spec(cfg, arch: dict, weights_path: Path, layers: list[int], name: str | None = None) -> dict:
    """Everything that decides the stored values (and nothing that does not: device, batch size
    and worker counts are left out on purpose)."""
    bcfg = cfg.backbone
    return {"backbone": name or bcfg.name, "arch": {k: arch.get(k) for k in ARCH_KEYS},
            "weights_sha256": weights_fingerprint(weights_path), "layers": layers,
            "image_size": to_plain(cfg)["image_size"],
            "normalisation": {"mean": list(bcfg.mean), "std": list(bcfg.std)},
            "pooling": {"type": "gem", "p": GEM_P, "clamp": GEM_EPS, "position_l2": True},
            "tokens": {"stored": bool(cfg.store_tokens), "pool": int(cfg.token_pool)},
            "stage_version": STAGE_VERSION}


def _num_workers(value, device: str) -> int:
    return auto_workers(device) if value == "auto" else int(value)


def _layout(cfg, listing, data_root, layers, arch) -> st.ViewLayout:
    token_shape = None
    if cfg.store_tokens and len(listing):
        h, w = image_hw(data_root / listing.ids[0], to_plain(cfg)["image_size"])
        per_side = arch["patch_size"] * cfg.token_pool
        token_shape = ((h // per_side) * (w // per_side), arch["hidden_size"])
    return st.ViewLayout(layers, arch["hidden_size"], int(cfg.block_size), token_shape)


def _bytes_per_row(layout: st.ViewLayout) -> int:
    per_layer = 2 * layout.channels * 4
    if layout.token_shape:
        per_layer += layout.token_shape[0] * layout.token_shape[1] * 2
    return per_layer * len(layout.layers)


def coordinates_table(cfg, data_root: Path) -> tuple[dict | None, str | None]:
    """(location -> (lat, lon), its file): `coords=PATH`, else <data_root>/locations.csv if any."""
    path = Path(cfg.coords).expanduser() if cfg.get("coords") else data_root / "locations.csv"
    if not path.exists():
        if cfg.get("coords"):
            raise CoordinatesError(f"coords={path} does not exist")
        return None, None
    return read_locations_csv(path), str(path)


def run(cfg) -> dict:
    t0 = time.perf_counter()
    clock = Clock()
    dcfg = cfg.dataset
    if dcfg.kind != "map" and (cfg.get("map") or cfg.get("photos") or cfg.get("train_root")):
        raise ConfigError("map=PATH, photos=FOLDER and train_root=FOLDER are read with dataset=map")
    maps = MapInputs(cfg) if dcfg.kind == "map" else None
    if maps is not None:
        listings, data_root = maps.listings, None
    else:
        data_root = resolve_data_root(dcfg, cfg.data_root)
        splits = cfg.split if cfg.split is None or not isinstance(cfg.split, str) else [cfg.split]
        listings = list_dataset(dcfg, data_root, splits)
    clock.lap("listing_s")
    coords, coords_source = coordinates_table(cfg, data_root) if maps is None else (None, None)
    bcfg, weights_path, arch = resolve_backbone(to_plain(cfg.backbone), cfg.weights)
    clock.lap("weights_source_s")   # a random backbone is built here the first time only
    layers = resolve_layers(list(cfg.layers), arch["num_hidden_layers"])
    if str(cfg.cluster or "").startswith("local:"):  # refuse before anything is written
        local_worker_devices(int(str(cfg.cluster).split(":", 1)[1]), cfg.device)
    spec = feature_spec(cfg, arch, weights_path, layers, bcfg["name"])
    if maps is not None:
        spec["map"] = maps.spec()
    clock.lap("weights_hash_s")
    root = st.open_store(cfg.store, mode="a")
    st.prepare_dataset(root, dcfg.name, spec, fingerprint(spec), bool(cfg.overwrite))
    jobs, groups, n_bytes = [], [], 0
    for listing in listings:
        view_root = data_root if maps is None else maps.data_root(listing)
        layout = _layout(cfg, listing, view_root, layers, arch)
        group = st.prepare_view(root, dcfg.name, listing, layout, to_plain(cfg))
        group.attrs["data_root"] = str(view_root)  # for pictures of retrievals at score time
        if coords is not None:
            st.write_coordinates(group, coordinates_for(listing.ids, coords), coords_source)
        if maps is not None:
            maps.write(group, listing)
        _reopen_damaged(group, listing, bool(cfg.verify))
        offset = sum(len(j.paths) for j in jobs)
        if maps is not None and listing.split == "test" and listing.view == "satellite" and not maps.web:
            new = plan_tile_jobs(group, st.pending_blocks(group), offset)
        else:
            new = plan_jobs(group, view_root, st.pending_blocks(group), offset)
        n_bytes += _bytes_per_row(layout) * sum(len(j.paths) for j in new)
        jobs += new
        groups.append((listing, group))
    n_images = sum(len(j.paths) for j in jobs)
    console.print(f"extract {dcfg.name}: {n_images} images in {len(jobs)} blocks to write, "
                  f"{n_bytes / 1e6:.1f} MB of features -> {cfg.store}")
    opts = EncodeOptions(arch["hidden_size"], bool(cfg.store_tokens), int(cfg.token_pool),
                         to_plain(cfg)["image_size"], tuple(cfg.backbone.mean), tuple(cfg.backbone.std),
                         maps.source if maps is not None else None)
    backbone_args = {"bcfg": bcfg, "weights": cfg.weights, "layers": layers,
                     "device": device_name(cfg.device), "precision": cfg.precision,
                     "compile": bool(cfg.compile)}
    clock.lap("store_prepare_s")
    if jobs:
        clock.times.update(_run_jobs(cfg, root, jobs, backbone_args, opts))
        clock.last = time.perf_counter()
    summary = _summary(cfg, groups, n_images, n_bytes, time.perf_counter() - t0)
    clock.lap("finalize_s")
    summary["timings"] = clock.times
    summary["coordinates"] = coords_source
    if jobs:
        console.print("time: " + ", ".join(f"{k[:-2].replace('_', ' ')} {v:.2f} s" for k, v in
                                           clock.times.items() if k.endswith("_s")), highlight=False)
    return summary


def _reopen_damaged(group, listing, full: bool) -> None:
    """Blocks marked done whose chunks were lost or altered since are extracted again."""
    damaged = st.reopen_damaged_blocks(group, full)
    if damaged:
        first = next(iter(damaged.items()))
        console.print(f"re-extracting {len(damaged)} damaged block(s) of {listing.split}/{listing.view} "
                      f"(block {first[0]}: {first[1]})", highlight=False)


def _run_jobs(cfg, root, jobs: list[BlockJob], backbone_args: dict, opts: EncodeOptions) -> dict:
    """-> where the time went (seconds), see extraction.run_in_process."""
    with progress_bar() as progress:
        task = progress.add_task("extract", total=sum(len(j.paths) for j in jobs))
        on_block = lambda job, _failed: progress.advance(task, len(job.paths))  # noqa: E731
        if cfg.cluster:
            t0 = time.perf_counter()
            _run_on_cluster(cfg, jobs, backbone_args, opts, on_block)
            return {"cluster_s": round(time.perf_counter() - t0, 3)}
        workers = _num_workers(cfg.num_workers, backbone_args["device"])
        return run_in_process(lambda: load_backbone(**backbone_args), jobs, opts, int(cfg.batch_size),
                              workers, lambda path: root[path], on_block, str(cfg.decode))


def _run_on_cluster(cfg, jobs, backbone_args, opts, on_block) -> None:
    """Each block is an independent task that writes its own chunks: no locks, any worker."""
    from distributed import as_completed
    n = local_workers(cfg.cluster)
    devices = local_worker_devices(n, cfg.device) if n else None
    store_url = str(cfg.store)
    if "://" not in store_url:
        store_url = str(Path(store_url).resolve())
    with dask_client(cfg.cluster, devices) as (client, threads):
        futures = {client.submit(block_task, store_url, job, backbone_args, opts,
                                 int(cfg.batch_size), threads, pure=False): job for job in jobs}
        for future in as_completed(futures):
            on_block(futures[future], future.result())


def _summary(cfg, groups, n_images, n_bytes, wall_s) -> dict:
    views, failed = {}, []
    for listing, group in groups:
        info = st.finalize_view(group)
        # map tiles that are mostly nodata were left out on purpose: counted, not failures
        skipped = sum(reason.startswith(SKIPPED) for _, reason in info["failed"])
        views[f"{listing.split}/{listing.view}"] = {"n": info["n"], "complete": info["complete"],
                                                    "n_failed": len(info["failed"]) - skipped,
                                                    **({"n_skipped": skipped} if skipped else {})}
        failed += [f for f in info["failed"] if not f[1].startswith(SKIPPED)]
    return {"stage": "extract", "store": str(cfg.store), "dataset": cfg.dataset.name,
            "views": views, "images_extracted": n_images, "bytes_written": n_bytes,
            "wall_s": round(wall_s, 3), "n_failed": len(failed), "skip_bad": bool(cfg.skip_bad),
            "failed": [{"id": i, "reason": r} for i, r in failed[:50]]}
