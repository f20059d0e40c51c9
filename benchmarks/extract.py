"""Extraction overhead and store read throughput, as ratios measured in one run.

    python benchmarks/extract.py [--images 96] [--size 224] [--width 384] [--workers 1] [--rounds 2]

(1) `geoalign extract` wall time (listing, store creation, decoding in DataLoader workers,
    forward, pooling, writes) / the bare backbone forward on the same batches of already
    decoded tensors. A random-weight DINOv3 of production depth (32 blocks) and width `--width`
    stands in for ViT-H+ so that the forward, as on a GPU with the real model, dominates.
(2) Reading a stored descriptor array with zarr (and dask) / reading the same array from .npy.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_images(root: Path, n: int, size: int) -> None:
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(n):
        view = "drone" if i % 4 else "satellite"
        folder = root / "test" / view / f"{i // 4:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((size, size), Image.BILINEAR).save(folder / f"{i}.png")


def overrides(args, store: Path, data: Path) -> list[str]:
    heads = max(1, args.width // 64)
    return [f"store={store}", "dataset=folder", f"data_root={data}", "split=test",
            f"backbone.hidden_size={args.width}", f"backbone.num_attention_heads={heads}",
            f"backbone.intermediate_size={4 * args.width}", f"batch_size={args.batch}",
            f"num_workers={args.workers}", "block_size=64"]


def time_pure_forward(cfg, store: Path, data: Path) -> float:
    """The bare backbone over the very batches extraction used, images decoded beforehand."""
    from geoalign_store.config import to_plain
    from geoalign_store.features import (job_batches, layer_tokens, load_backbone, load_image,
                                         plan_jobs)
    import zarr
    bb = load_backbone(to_plain(cfg.backbone), None, list(cfg.layers))
    seconds = 0.0
    for view in ("drone", "satellite"):
        group = zarr.open_group(str(store), mode="r")[f"features/folder/test/{view}"]
        jobs = plan_jobs(group, data, list(range(group["block_done"].shape[0])))
        paths = [p for j in jobs for p in j.paths]
        for batch in job_batches(jobs, int(cfg.batch_size)):
            pixels = torch.stack([load_image(paths[i]) for i in batch])
            t0 = time.perf_counter()
            layer_tokens(bb, pixels)
            seconds += time.perf_counter() - t0
    return seconds


def bench_extract(args) -> None:
    from geoalign_store.config import compose
    from pipelines import extract
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("GEOALIGN_CACHE", str(tmp / "cache"))
        make_images(tmp / "data", args.images, args.size)
        cfg = compose("extract", overrides(args, tmp / "warm.zarr", tmp / "data"))
        extract.run(cfg)  # warm-up: materialises the random backbone, fills OS caches
        walls, pures = [], []
        for r in range(args.rounds):  # interleaved, min of each: a shared machine's load drifts
            cfg = compose("extract", overrides(args, tmp / f"s{r}.zarr", tmp / "data"))
            t0 = time.perf_counter()
            timings = extract.run(cfg)["timings"]
            walls.append(time.perf_counter() - t0)
            pures.append(time_pure_forward(cfg, tmp / f"s{r}.zarr", tmp / "data"))
        wall, pure = min(walls), min(pures)
    if args.rounds > 1:
        print("rounds (extract / forward, s): " + ", ".join(f"{w:.1f} / {f:.1f}" for w, f in zip(walls, pures)))
    print(f"extract: {args.images} images {args.size}px, width {args.width}, depth 32, "
          f"{args.workers} decode worker(s), torch threads {torch.get_num_threads()}")
    print(f"  geoalign extract wall  {wall:8.2f} s  ({args.images / wall:.1f} img/s)")
    print(f"  pure backbone forward  {pure:8.2f} s  ({args.images / pure:.1f} img/s)")
    print(f"  ratio extract / forward = {wall / pure:.3f}  (target <= 1.10)")
    print("  where the extract run's time went (s): " + ", ".join(
        f"{k[:-2]} {v:.2f}" for k, v in timings.items() if k.endswith("_s")))


def _best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        del out
    return min(times)


def bench_read(rows: int = 200_000, dim: int = 1280) -> None:
    """Reads (and writes) of a descriptor array: .npy, zarr as extract writes it (raw chunks
    ending in a crc32c checksum), the same without checksums, geoalign's checked read (also
    lists the chunks, so that a missing one is never read as zeros), and dask."""
    import dask.array as da
    import zarr
    from geoalign_store.store import CheckedArray, FEATURE_CODECS
    with tempfile.TemporaryDirectory() as tmp:
        data = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
        writes = {}
        for name, codecs in (("plain", None), ("crc32c", FEATURE_CODECS)):
            def write(name=name, codecs=codecs, data=data):
                arr = zarr.create_array(f"{tmp}/{name}.zarr", shape=data.shape, dtype="float32",
                                        chunks=(256, dim), compressors=codecs, overwrite=True)
                arr[:] = data
            writes[name] = _best(write)
        np.save(f"{tmp}/a.npy", data)
        del data, write  # the arrays are on disk now: free the memory
        done = np.ones(-(-rows // 256), dtype=bool)
        reads = {"numpy .npy": lambda: np.load(f"{tmp}/a.npy"),
                 "zarr, no checksum": lambda: zarr.open_array(f"{tmp}/plain.zarr", mode="r")[:],
                 "zarr + crc32c": lambda: zarr.open_array(f"{tmp}/crc32c.zarr", mode="r")[:],
                 "geoalign checked": lambda: CheckedArray(zarr.open_array(f"{tmp}/crc32c.zarr", mode="r"),
                                                          "", done)[:],
                 "dask.from_zarr": lambda: da.from_zarr(f"{tmp}/crc32c.zarr", chunks=(8192, dim)).compute()}
        for fn in reads.values():
            fn()                                              # page cache warm for every file
        timings = {name: _best(fn) for name, fn in reads.items()}
    gb = rows * dim * 4 / 1e9
    print(f"store read: {rows} x {dim} float32 ({gb:.2f} GB), best of 3")
    for name, seconds in timings.items():
        print(f"  {name:18s} {seconds:6.2f} s  {gb / seconds:5.2f} GB/s  "
              f"ratio to numpy {seconds / timings['numpy .npy']:.2f}")
    print(f"  checksum read overhead: crc32c / no checksum = "
          f"{timings['zarr + crc32c'] / timings['zarr, no checksum']:.3f}, checked read / no checksum = "
          f"{timings['geoalign checked'] / timings['zarr, no checksum']:.3f}  (aim <= 1.05)")
    print(f"  checksum write overhead: crc32c {writes['crc32c']:.2f} s / plain {writes['plain']:.2f} s = "
          f"{writes['crc32c'] / writes['plain']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", default="auto", help="decode workers (auto: 0 on CPU)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="extract and forward timed alternately N times; the minimum of each")
    parser.add_argument("--skip-read", action="store_true")
    parser.add_argument("--skip-extract", action="store_true")
    args = parser.parse_args()
    if not args.skip_extract:
        bench_extract(args)
    if not args.skip_read:
        bench_read()


if __name__ == "__main__":
    main()
