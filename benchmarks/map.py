"""Map tiles cut and extracted on the fly from a large GeoTIFF, against the same tiles saved as PNG
files first, as ratios measured in one run (the tiny random backbone on the CPU).

    python benchmarks/map.py [--side 10000] [--tile-m 250] [--overlap 0] [--size 128] [--rounds 2]

A `--side` x `--side` px RGB GeoTIFF (1 m pixels, UTM 32N, tiled, the demo's landscape repeated)
is cut into `--tile-m` tiles. (1) `geoalign extract dataset=map` reads each tile as a rasterio
window resampled to `--size` px; (2) the same windows, saved as PNG files at their full
resolution beforehand (not timed), go through `geoalign extract dataset=folder` with
image_size=`--size`. Each run is a subprocess of its own (so each peak RSS is that run's alone), the two sources
alternating for `--rounds` rounds; the best round of each is compared (a shared machine's noise).
Also: the bare read rate of either source (decode + resample, no backbone), so it shows whether
reading is the bottleneck; and the peak RSS of the same number of tiles cut from a map of half
the side (a quarter of the pixels), so it shows whether memory grows with the map.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from geoalign_store.datasets import cut_tiles, open_map, render_landscape
from geoalign_store.features import ImageFiles, MapSource, MapTiles


def write_big_map(path: Path, side: int) -> None:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window
    patch = render_landscape(0, 6)                       # 1984 px, repeated in windows
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=3, dtype="uint8",
                       crs="EPSG:32632", transform=from_origin(500_000, 5_600_000, 1.0, 1.0),
                       tiled=True, blockxsize=512, blockysize=512) as dst:
        for r in range(0, side, 1024):
            for c in range(0, side, 1024):
                h, w = min(1024, side - r), min(1024, side - c)
                block = np.take(np.take(patch, np.arange(r, r + h) % len(patch), 0), np.arange(c, c + w) % len(patch), 1)
                dst.write(np.moveaxis(block, 2, 0), window=Window(c, r, w, h))


def save_tiles_as_png(map_path: Path, windows: np.ndarray, root: Path) -> None:
    """The same windows at full resolution as PNG files, folder layout test/satellite/<row>/."""
    from PIL import Image
    source = MapSource(tuple(open_map(map_path)))
    full = MapTiles(source, windows, (int(windows[0, 4]), int(windows[0, 3])))
    for i in range(len(full)):
        _, pixels, _ = full[i]
        folder = root / "test" / "satellite" / f"{windows[i, 2]:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(folder / f"{windows[i, 1]:06d}.png", compress_level=1)


def read_rate(dataset) -> float:
    t0 = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return len(dataset) / (time.perf_counter() - t0)


def extract_in_subprocess(overrides: list[str]) -> dict:
    """(summary, peak RSS MB) of one `geoalign extract` run in a fresh interpreter."""
    code = ("import json, resource, sys; from pipelines import extract; from geoalign_store.config import compose; "
            "s = extract.run(compose('extract', sys.argv[1:])); "
            "print(json.dumps({'wall_s': s['wall_s'], 'n': s['images_extracted'], 'timings': s['timings'], "
            "'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")
    out = subprocess.run([sys.executable, "-c", code, *overrides], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--side", type=int, default=10_000)
    p.add_argument("--tile-m", type=float, default=250)
    p.add_argument("--overlap", type=float, default=0.0)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2, help="runs of each source, alternating")
    p.add_argument("--no-memory-check", dest="memory_check", action="store_false",
                   help="skip the run on a map of half the side (same tile count) that shows peak RSS does not grow with the map")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="geoalign-map-bench-") as tmp:
        tmp = Path(tmp)
        map_path = tmp / "big.tif"
        t0 = time.perf_counter()
        write_big_map(map_path, args.side)
        files = open_map(map_path)
        table = cut_tiles(files, [args.tile_m], args.overlap)
        windows = np.concatenate([table.file[:, None].astype(np.int64), table.window], axis=1)
        save_tiles_as_png(map_path, windows, tmp / "pngs")
        print(f"map {args.side} x {args.side} px ({map_path.stat().st_size / 1e6:.0f} MB on disk, "
              f"{3 * args.side ** 2 / 1e6:.0f} MB of pixels); {len(table)} tiles of {args.tile_m:g} m at overlap "
              f"{args.overlap}, read at {args.size} px (set-up {time.perf_counter() - t0:.0f} s)")
        tiles = MapTiles(MapSource(tuple(files)), windows, args.size)
        pngs = ImageFiles(sorted(str(q) for q in (tmp / "pngs").rglob("*.png")), args.size)
        map_read, png_read = read_rate(tiles), read_rate(pngs)
        common = ["backbone=tiny", f"image_size={args.size}", "num_workers=0", "device=cpu", "batch_size=32"]
        requests = {"map": ["dataset=map", f"map={map_path}", f"tile_m=[{args.tile_m}]", f"overlap={args.overlap}"],
                    "png": ["dataset=folder", f"data_root={tmp / 'pngs'}", "dataset.views=[satellite]", "split=test"]}
        small = None
        if args.memory_check:   # the same number of tiles from a map of a quarter of the pixels
            half = tmp / "half.tif"
            write_big_map(half, args.side // 2)
            small = extract_in_subprocess([f"store={tmp / 'half.zarr'}", "dataset=map", f"map={half}",
                                           f"tile_m=[{args.tile_m / 2}]", f"overlap={args.overlap}", *common])
            half.unlink()
        runs = {name: [] for name in requests}
        for r in range(args.rounds):   # alternating, each into a fresh store: the best of each is kept
            for name in (("map", "png") if r % 2 == 0 else ("png", "map")):
                store = tmp / f"{name}-{r}.zarr"
                runs[name].append(extract_in_subprocess([f"store={store}", *requests[name], *common]))
    print(f"read only (decode + resample, one thread): map windows {map_read:.0f} tiles/s, "
          f"PNG files {png_read:.0f} tiles/s (ratio {map_read / png_read:.2f})")
    best = {}
    for name, rounds in runs.items():
        rates = [r["n"] / r["wall_s"] for r in rounds]
        best[name] = rounds[int(np.argmax(rates))]
        r = best[name]
        print(f"extract from {name:3s}: {r['n']} tiles in {r['wall_s']:.1f} s = {r['n'] / r['wall_s']:.1f} tiles/s "
              f"(steady {r['timings']['steady_images'] / max(r['timings']['steady_s'], 1e-9):.1f}/s; rounds: "
              f"{', '.join(f'{x:.1f}' for x in rates)}/s), peak RSS {max(x['rss_mb'] for x in rounds):.0f} MB")
    m, q = best["map"], best["png"]
    print(f"ratios map / png (best rounds): tiles/s {(m['n'] / m['wall_s']) / (q['n'] / q['wall_s']):.2f}, "
          f"peak RSS {m['rss_mb'] / q['rss_mb']:.2f}")
    if small is not None:
        big_rss = max(x["rss_mb"] for x in runs["map"])
        print(f"peak RSS vs map size, {small['n']} tiles each: {args.side // 2} px side {small['rss_mb']:.0f} MB, "
              f"{args.side} px side {big_rss:.0f} MB (ratio {big_rss / small['rss_mb']:.2f} for 4x the pixels)")


if __name__ == "__main__":
    main()
