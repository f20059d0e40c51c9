"""`locate` latency on CPU with the demo backbone, as figures and ratios measured in one run.

    python benchmarks/locate.py [--store geoalign-demo.zarr] [--photos 16] [--cold 3]

(1) Warm: a `Locator` (backbone, heads and gallery kept loaded) localising new drone photos one
    at a time (per-image latency) and as one batch (per-image cost), beside the bare backbone
    forward of one photo: what the Locator adds around the network.
(2) Cold: the whole `geoalign locate PHOTO store=...` process (interpreter, imports, weights
    check, backbone and heads loading, one photo), and its ratio to the warm latency.
The photos are freshly generated views of the demo's test locations (no store holds them).
Without --store, the demo data is extracted into a temporary store first (raw descriptors).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def demo_store(tmp: Path) -> Path:
    from geoalign_store.config import compose
    from pipelines import extract
    store = tmp / "demo.zarr"
    extract.run(compose("extract", [f"store={store}", "dataset=demo", "num_workers=0"]))
    return store


def fresh_photos(folder: Path, n: int) -> list[tuple[Path, str]]:
    from geoalign_store.config import compose
    from geoalign_store.datasets import render_drone_view
    params = dict(compose("extract", ["dataset=demo"]).dataset.generate)
    photos = []
    for j in range(n):
        loc = params["n_train"] + j % params["n_test"]
        path = folder / f"photo-{j:03d}.png"
        render_drone_view(loc, 2000 + j, seed=params["seed"], image_size=params["image_size"]).save(path)
        photos.append((path, f"{loc:04d}"))
    return photos


def bench_warm(store: Path, photos, heads: str) -> float:
    from geoalign_store.features import layer_tokens, load_image
    from geoalign_store.retrieval import Locator
    t0 = time.perf_counter()
    loc = Locator(store, heads=heads, device="cpu")
    load = time.perf_counter() - t0
    paths = [p for p, _ in photos]
    loc.locate(paths[:1])  # warm-up
    single = []
    for path in paths:
        t0 = time.perf_counter()
        loc.locate([path])
        single.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    answers = loc.locate(paths)
    batch = (time.perf_counter() - t0) / len(paths)
    pixels = load_image(paths[0])[None]
    forward = []
    for _ in range(len(paths)):
        t0 = time.perf_counter()
        layer_tokens(loc.backbone, pixels)
        forward.append(time.perf_counter() - t0)
    hits = sum(a["top"][0]["location"] == truth for a, (_, truth) in zip(answers, photos))
    warm, fwd = statistics.median(single), statistics.median(forward)
    print(f"warm Locator (heads={loc.embedder.name}, {len(loc.gallery_side.rows)} satellites, "
          f"{loc.backbone.channels}-wide x {len(loc.backbone.model.layer)} blocks, "
          f"torch threads {torch.get_num_threads()}): constructed in {load:.2f} s")
    print(f"  one photo per call   median {1e3 * warm:7.1f} ms/image  (over {len(paths)} photos)")
    print(f"  {len(paths)} photos in one call       {1e3 * batch:7.1f} ms/image  "
          f"(ratio batch / single = {batch / warm:.2f})")
    print(f"  bare backbone forward median {1e3 * fwd:7.1f} ms/image  "
          f"(ratio locate / forward = {warm / fwd:.2f})")
    print(f"  top-1 is the photo's true location for {hits}/{len(paths)} new photos")
    return warm


def bench_cold(store: Path, photo: Path, heads: str, runs: int, warm: float) -> None:
    cmd = [sys.executable, "-m", "pipelines.cli", "locate", str(photo), f"store={store}",
           f"heads={heads}", "device=cpu", "pictures=false", "--json"]
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=Path(__file__).parents[1],
                       env=os.environ.copy())
        walls.append(time.perf_counter() - t0)
    cold = statistics.median(walls)
    print(f"cold `geoalign locate` process, one photo: median {cold:.2f} s over {runs} runs "
          f"(ratio cold / warm = {cold / warm:.0f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None, help="a demo store (default: extract one)")
    parser.add_argument("--heads", default="auto")
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--cold", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = args.store or demo_store(tmp)
        photos = fresh_photos(tmp, args.photos)
        warm = bench_warm(store, photos, args.heads)
        bench_cold(store, photos[0][0], args.heads, args.cold, warm)


if __name__ == "__main__":
    main()
