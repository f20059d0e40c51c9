"""Every GPU figure of issue 9 in one run (<= 5 minutes on one H100/H200), each part guarded.

    python benchmarks/gpu.py [--budget 300] [--device cuda] [--peak-tflops 790]
    python benchmarks/gpu.py --smoke        # CPU, tiny backbone and sizes: checks the plumbing

1. extract: a random-weight DINOv3 ViT-H+/16 (`backbone=dinov3_vith16plus backbone.seed=0`, layers
   26/28) on synthetic 512 px JPEGs made here, two `geoalign extract` processes of N1 and N2
   images: fixed cost per run (wall = fixed + n / rate, from the two runs) with the larger run's
   breakdown (its `timings`), steady-state img/s and its fraction of the bf16 peak (FLOPs per
   image computed from the architecture), the bare forward on pre-decoded batches, and the
   decoding alone (threads vs DataLoader processes: first-batch latency, img/s).
2. bf16 (what extract does on a GPU) vs fp32 descriptors of the same images: max abs difference.
3. fit-heads' default recipe at University-1652 size on the device (benchmarks/fit.py's data).
4. `geoalign score` at University-1652 size with device= (whole process, heads=none), if the
   stage has that key on this branch; else it says so.
5. faiss IVF-PQ build/search at 1e6 x 256 on the GPU, when faiss has GPU support (else why not).
5b. `geoalign index index=ivfpq`'s shards added on the GPU against the CPU, the same trained index
   (a 1e5 x 768 simulated store, benchmarks/scale.py's; the rule's PCAR256,IVF1024,PQ64x8 and an
   HNSW coarse quantizer, which the GPU adds through a flat copy of its centroids): add seconds
   on each, rows in the same list, identical codes, top-1 agreement and each one's 1-recall@1
   against the exact search.
6. extract's compile=true: the bare forward compiled vs eager (rate, compile seconds, difference)
   and one `extract compile=true` process (steady state, breakdown).
A part that fails prints its error and the others still run; a part that would start after the
time budget is spent is skipped (and says so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from geoalign_store.features import use_huge_pages

use_huge_pages()   # as the CLI does; before torch loads (it reads the switch once)
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

FULL = dict(backbone="dinov3_vith16plus", size=512, n1=256, n2=2304, batch=64, unique=256,
            forward_iters=10, diff_images=64, fit=dict(dim=1280, groups=700, per_group=54),
            fit_overrides=[], score=dict(n_loc=701, drones=54, distractors=250, dim=1280),
            faiss=dict(n=1_000_000, dim=256, queries=10_000, nlist=4096, m=32),
            gpu_add=dict(n=100_000, dim=768, queries=1000, shard_rows=32768))
SMOKE = dict(backbone="tiny", size=64, n1=8, n2=24, batch=8, unique=8, forward_iters=2,
             diff_images=8, fit=dict(dim=80, groups=16, per_group=6),
             fit_overrides=["agra.epochs=3", "agra.teacher_refresh=2", "select.latents=[8,16]",
                            "select.n_maps=[1,2]", "select.map_rank=32"],
             score=dict(n_loc=20, drones=5, distractors=5, dim=80),
             faiss=dict(n=10_000, dim=64, queries=500, nlist=32, m=4),
             gpu_add=dict(n=20_000, dim=64, queries=200, shard_rows=8192))
ADD_VARIANTS = {"rule": "{}", "hnsw": "{quantizer: hnsw, kmeans: two_level}"}  # index_params of part 5b


def flops_per_image(arch: dict, size: int, blocks: int) -> float:
    """Multiply-adds x 2 of the patch embedding and `blocks` blocks (projections, gated MLP,
    attention scores and values) for a size x size image."""
    c, inner, p = arch["hidden_size"], arch["intermediate_size"], arch["patch_size"]
    patches = (size // p) ** 2
    tokens = 1 + arch["num_register_tokens"] + patches
    mlp = (3 if arch.get("use_gated_mlp") else 2) * c * inner
    per_token = 4 * c * c + mlp + 2 * tokens * c
    return 2.0 * (patches * 3 * p * p * c + blocks * tokens * per_token)


def make_images(root: Path, n: int, unique: int, size: int) -> None:
    """n JPEGs in the folder layout (one satellite per 16 images), `unique` of them distinct
    (the rest hard links: decoding costs the same)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    made = []
    for i in range(n):
        view = "satellite" if i % 16 == 0 else "drone"
        path = root / "test" / view / f"{i // 16:05d}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        if len(made) < unique:
            coarse = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
            Image.fromarray(coarse).resize((size, size), Image.BICUBIC).save(path, quality=90)
            made.append(path)
        else:
            os.link(made[i % unique], path)


def extract_process(store: Path, data: Path, cfg: dict, device: str, extra=()) -> tuple[float, dict]:
    """One `geoalign extract` process, timed from outside: -> (wall seconds, its summary)."""
    cmd = [sys.executable, "-m", "pipelines.cli", "extract", f"store={store}", "dataset=folder",
           f"data_root={data}", "split=test", f"backbone={cfg['backbone']}", "backbone.seed=0",
           f"batch_size={cfg['batch']}", f"device={device}", *extra, "--json"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(f"extract exited {out.returncode}: {out.stderr[-2000:]}")
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


def _backbone(cfg) -> tuple[dict, float]:
    """(backbone config, FLOPs per image through the 29 blocks layers 26/28 need)."""
    from geoalign_store.config import compose, to_plain
    from geoalign_store.features import read_arch, weights_source
    bcfg = to_plain(compose("extract", [f"backbone={cfg['backbone']}", "backbone.seed=0"]).backbone)
    return bcfg, flops_per_image(read_arch(weights_source(bcfg, None)), cfg["size"], 29)


def _steady(timings: dict) -> float:
    """img/s of an extract run after its first batch (nan when there was no second batch)."""
    return timings["steady_images"] / timings["steady_s"] if timings.get("steady_s") else float("nan")


def _breakdown(timings: dict) -> str:
    return ", ".join(f"{k[:-2]} {v:.2f}" for k, v in timings.items() if k.endswith("_s"))


def part_extract(args, cfg, tmp: Path) -> None:
    from geoalign_store.config import compose
    from geoalign_store.features import weights_fingerprint, weights_source
    t0 = time.perf_counter()
    weights_fingerprint(weights_source(  # built and hashed once per machine, cached
        compose("extract", [f"backbone={cfg['backbone']}", "backbone.seed=0"]).backbone, None))
    print(f"  random {cfg['backbone']} weights built/hashed (once per cache): {time.perf_counter() - t0:.1f} s")
    bcfg, flops = _backbone(cfg)
    for n in (cfg["n1"], cfg["n2"]):
        make_images(tmp / f"img{n}", n, cfg["unique"], cfg["size"])
    runs = {n: extract_process(tmp / f"s{n}.zarr", tmp / f"img{n}", cfg, args.device)
            for n in (cfg["n1"], cfg["n2"])}
    (w1, _), (w2, big) = runs[cfg["n1"]], runs[cfg["n2"]]
    rate = (cfg["n2"] - cfg["n1"]) / (w2 - w1) if w2 > w1 else float("nan")  # nan: timing noise
    fixed = w1 - cfg["n1"] / rate
    steady = _steady(big["timings"])
    print(f"  {cfg['n1']} images: {w1:.1f} s wall; {cfg['n2']} images: {w2:.1f} s wall "
          f"({cfg['n2'] / w2:.0f} img/s)  [whole processes: interpreter, imports, device start]")
    print(f"  -> fixed cost per run {fixed:.1f} s (target <= 10 s), marginal rate {rate:.0f} img/s")
    print(f"  breakdown of the {cfg['n2']}-image run (s): " + _breakdown(big["timings"]))
    print(f"  steady state inside the run: {steady:.0f} img/s = {steady * flops / 1e12:.3g} TFLOP/s"
          + _peak(args, steady * flops) + f"  ({flops / 1e12:.3g} TFLOP/image, 29 blocks, {cfg['size']} px)")
    part_forward(args, cfg, bcfg, flops)
    part_decode(args, cfg, tmp / f"img{cfg['n2']}", flops)


def part_decode(args, cfg, data: Path, flops: float) -> None:
    """extract's decoding alone, threads vs DataLoader processes, with extract's worker count and
    pinning: first batch latency (from a standing start) and img/s; the GPU needs ~60% of the
    peak in img/s for the target."""
    from geoalign_store.features import (BlockJob, ImageFiles, auto_workers, decoded_batches,
                                         job_batches)
    paths = sorted(str(p) for p in data.rglob("*.jpg"))
    workers = auto_workers(args.device) or 2  # (a CPU's auto is 0: --smoke still uses workers)
    need = 0.6 * args.peak_tflops * 1e12 / flops
    for mode in ("threads", "processes"):
        t0 = time.perf_counter()
        batches = decoded_batches(ImageFiles(paths, None), job_batches([BlockJob("", 0, paths, 0)], cfg["batch"]),
                                  workers, mode, pin=torch.cuda.is_available())
        next(batches)
        first = time.perf_counter() - t0
        n = sum(len(b["indices"]) for b in batches)
        rate = n / (time.perf_counter() - t0 - first)
        getattr(batches, "close", lambda: None)()
        print(f"  decode={mode}, {workers} workers: first batch after {first:.2f} s, then {rate:.0f} img/s "
              f"({cfg['size']} px JPEG{', pinned' if torch.cuda.is_available() else ''}; 60% of peak needs {need:.0f})")


def part_compile(args, cfg, tmp: Path) -> None:
    """extract's compile=true lever: the bare forward compiled vs eager (same weights, same
    batch), and one whole `extract compile=true` process of N2 images (its steady state and
    breakdown: the compilation is in first_batch_compute)."""
    bcfg, flops = _backbone(cfg)
    eager = part_forward(args, cfg, bcfg, flops)
    compiled = part_forward(args, cfg, bcfg, flops, compile=True)
    diff = max(float((eager[k] - compiled[k]).abs().max()) for k in eager)
    print(f"  max |compiled - eager| over the layers' tokens: {diff:.2e}")
    data = tmp / f"img{cfg['n2']}"
    if not data.exists():
        make_images(data, cfg["n2"], cfg["unique"], cfg["size"])
    wall, summary = extract_process(tmp / "compiled.zarr", data, cfg, args.device, ["compile=true"])
    steady = _steady(summary["timings"])
    print(f"  extract compile=true, {cfg['n2']} images: {wall:.1f} s wall; steady state {steady:.0f} img/s = "
          f"{steady * flops / 1e12:.3g} TFLOP/s" + _peak(args, steady * flops))
    print("  breakdown (s): " + _breakdown(summary["timings"]))


def _peak(args, flop_s: float) -> str:
    if not args.device.startswith("cuda"):
        return " (no GPU: fraction of peak n/a)"
    return f" = {100 * flop_s / (args.peak_tflops * 1e12):.0f}% of {args.peak_tflops:.0f} TFLOP/s bf16 peak (target >= 60%)"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def part_forward(args, cfg, bcfg, flops: float, compile: bool = False) -> dict:
    """The bare forward (bf16 weights on a GPU) on one pre-decoded batch already on the device;
    with `compile`, the first call's seconds are the compilation. -> the last outputs."""
    from geoalign_store.features import layer_tokens, load_backbone
    bb = load_backbone(bcfg, None, [26, 28], args.device, "auto", compile=compile)
    pixels = torch.randn(cfg["batch"], 3, cfg["size"], cfg["size"],
                         generator=torch.Generator().manual_seed(0)).to(args.device)
    t0 = time.perf_counter()
    layer_tokens(bb, pixels)
    _sync(args.device)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(cfg["forward_iters"]):
        out = layer_tokens(bb, pixels)
    _sync(args.device)
    rate = cfg["forward_iters"] * cfg["batch"] / (time.perf_counter() - t0)
    print(f"  bare forward ({bb.dtype or torch.float32} weights{', compiled' if compile else ''}, batch "
          f"{cfg['batch']}): {rate:.0f} img/s = {rate * flops / 1e12:.3g} TFLOP/s" + _peak(args, rate * flops)
          + f"; first call {first:.1f} s")
    out = {k: v.float().cpu() for k, v in out.items()}
    del bb
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def part_bf16_diff(args, cfg, tmp: Path) -> None:
    """The same decoded images through extract's encoder with fp32 and with bf16 weights."""
    from geoalign_store.config import compose, to_plain
    from geoalign_store.features import EncodeOptions, encode_stack, load_backbone, read_rgb
    bcfg = to_plain(compose("extract", [f"backbone={cfg['backbone']}", "backbone.seed=0"]).backbone)
    data = tmp / "img_diff"
    make_images(data, cfg["diff_images"], cfg["diff_images"], cfg["size"])
    pixels = torch.stack([read_rgb(p) for p in sorted(data.rglob("*.jpg"))])
    opts = EncodeOptions(bcfg["hidden_size"])
    out = {}
    for precision in ("fp32", "bf16"):
        bb = load_backbone(bcfg, None, [26, 28], args.device, precision)
        parts = [encode_stack(bb, pixels[i:i + 16], opts) for i in range(0, len(pixels), 16)]
        out[precision] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        del bb
    for name in out["fp32"]:
        diff = np.abs(out["fp32"][name] - out["bf16"][name]).max()
        target = "  (target <= 1e-3)" if name.endswith("desc") else ""
        print(f"  {name}: max |bf16 - fp32| = {diff:.2e} over {len(pixels)} images{target}")


def part_fit(args, cfg, tmp: Path) -> None:
    import fit as fit_bench
    a = argparse.Namespace(device=args.device, seed=0, **cfg["fit"])
    out = fit_bench.time_default_recipe(a, cfg["fit_overrides"])
    print(f"  -> fit-heads default recipe on {out['device']}: {out['total_s']:.1f} s (target <= 30 s on a GPU)")


def write_score_store(path: Path, n_loc: int, drones: int, distractors: int, dim: int) -> None:
    """Random L2-normalised test descriptors in plain zarr, University-1652's counts by default."""
    import zarr
    rng = np.random.default_rng(0)
    root = zarr.open_group(str(path), mode="w")
    sat_labels = np.arange(n_loc + distractors)
    drone_labels = np.repeat(np.arange(n_loc), drones)
    for view, labels in (("satellite", sat_labels), ("drone", drone_labels)):
        group = root.require_group(f"features/u1652/test/{view}")
        group.create_array("ids", shape=(len(labels),), dtype=str)[:] = np.array(
            [f"{view}/{i}.jpg" for i in range(len(labels))], dtype=object)
        group.create_array("labels", shape=(len(labels),), dtype="int64")[:] = labels
        for layer in (26, 28):
            desc = rng.standard_normal((len(labels), dim), dtype=np.float32)
            desc /= np.linalg.norm(desc, axis=1, keepdims=True)
            group.create_array(f"layer_{layer}/desc", data=desc, chunks=(4096, dim))


def part_score(args, cfg, tmp: Path) -> None:
    from geoalign_store.config import compose
    store = tmp / "score.zarr"
    write_score_store(store, **cfg["score"])
    has_device = "device" in compose("score", [])
    overrides = [f"store={store}", "heads=none", "pictures=0"]
    if has_device:
        overrides.append(f"device={args.device}")
    else:
        print("  score has no device= key on this branch (issue 9 item 3): the figure below is on the CPU")
    cmd = [sys.executable, "-m", "pipelines.cli", "score", *overrides, "--json"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(f"score exited {out.returncode}: {out.stderr[-2000:]}")
    s = cfg["score"]
    print(f"  geoalign score D2S heads=none, {s['n_loc'] * s['drones']} queries x "
          f"{s['n_loc'] + s['distractors']} gallery, d={2 * s['dim']}: {wall:.2f} s whole process on "
          f"{args.device if has_device else 'cpu'} (target <= 3 s on a GPU)")


def part_faiss(args, cfg) -> None:
    import faiss
    from geoalign_store.retrieval import gpu_available
    f = cfg["faiss"]
    gpu = gpu_available()
    if not gpu:
        why = ("faiss has no GPU support (faiss-cpu installed; the `gpu` extra is faiss-gpu-cu12)"
               if not hasattr(faiss, "StandardGpuResources") else "faiss sees no CUDA device")
        print(f"  no GPU faiss: {why}" + ("; timing the CPU index at smoke size instead" if args.smoke else ""))
        if not args.smoke:
            return
    rng = np.random.default_rng(0)
    x = rng.standard_normal((f["n"], f["dim"]), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[: f["queries"]] + 0.05 * rng.standard_normal((f["queries"], f["dim"]), dtype=np.float32)
    index = faiss.index_factory(f["dim"], f"IVF{f['nlist']},PQ{f['m']}x8", faiss.METRIC_INNER_PRODUCT)
    t0 = time.perf_counter()
    if gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    train = min(f["n"], max(64 * f["nlist"], 39 * 256))   # k-means: >= 39 points per centroid
    index.train(x[rng.choice(f["n"], train, replace=False)])
    index.add(x)
    built = time.perf_counter() - t0
    faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", 32) if gpu else setattr(
        faiss.extract_index_ivf(index), "nprobe", 32)
    t0 = time.perf_counter()
    _, ids = index.search(q, 10)
    searched = time.perf_counter() - t0
    recall = float(np.mean(ids[:, 0] == np.arange(f["queries"])))
    print(f"  IVF{f['nlist']},PQ{f['m']}x8 on {'GPU' if gpu else 'CPU'}, {f['n']:.0e} x {f['dim']}: build "
          f"(train + add) {built:.1f} s, search {f['queries']} queries top-10 (nprobe 32) {searched:.2f} s "
          f"= {f['queries'] / searched:.0f} q/s, R@1 of the perturbed row {recall:.3f}")


def part_gpu_add(args, cfg, tmp: Path) -> None:
    """The same trained index's shards added on the CPU, then again on the GPU (a resumed build:
    trained.faiss kept, the shards and the merge removed), compared row by row and by search."""
    import scale as scale_bench
    from geoalign_store.retrieval import gpu_available
    g = cfg["gpu_add"]
    device = args.device if gpu_available() else "cpu"
    if device == "cpu":
        print("  no GPU faiss (faiss-cpu, or no CUDA device): both builds on the CPU"
              + (" (smoke: the comparison's plumbing)" if args.smoke else "; skipped"))
        if not args.smoke:
            return
    for name, params in ADD_VARIANTS.items():
        store = tmp / f"add-{name}.zarr"
        scale_bench.write_store(store, g["n"], g["dim"], g["queries"], 50, 0, 16350)
        queries = scale_bench._unit(np.asarray(scale_bench.st.open_store(str(store), mode="r")[
            f"features/scale/test/drone/layer_{scale_bench.LAYER}/desc"][:], np.float32))
        exact = scale_bench.exact_top(store, queries, 10)[1]
        cpu = _index_process(store, g, params, "cpu")
        folder = store / "artefacts/indices" / cpu["name"]
        before = _rows_and_top1(folder, cpu["params"]["nprobe"], queries)
        for path in [*(folder / "shards").iterdir(), *(folder / f for f in ("index.json", "index.faiss", "index.ivfdata"))]:
            path.unlink()
        gpu = _index_process(store, g, params, device)
        after = _rows_and_top1(folder, gpu["params"]["nprobe"], queries)
        same_list = before[0] == after[0]
        same_code = same_list & np.all(before[1] == after[1], axis=1)
        print(f"  {name}: {cpu['factory']}, {g['n']:.0e} x {g['dim']}, {cpu['shards']['n']} shards: add "
              f"{cpu['timings']['add_s']:.1f} s on the CPU ({os.cpu_count()} cores), {gpu['timings']['add_s']:.1f} s "
              f"on {gpu.get('add_devices')} (train reused: {gpu['timings']['train_s'] == 0})"
              + (f"; fell back: {gpu['gpu_fallback']}" if gpu.get("gpu_fallback") else ""))
        print(f"    rows in the same list {same_list.mean():.4f}, identical codes {same_code.mean():.4f}; "
              f"top-1 (codes, nprobe {cpu['params']['nprobe']}) GPU = CPU for {np.mean(before[2] == after[2]):.3f} "
              f"of {len(queries)} queries; 1-recall@1 vs exact: CPU {np.mean(before[2] == exact[:, 0]):.3f}, "
              f"GPU {np.mean(after[2] == exact[:, 0]):.3f}")


def _index_process(store: Path, g: dict, params: str, device: str) -> dict:
    """One `geoalign index index=ivfpq` process in-process (no cluster) on `device`: its summary."""
    import scale as scale_bench
    try:
        return scale_bench.build(store, 0, g["shard_rows"], [f"index_params={params}", f"device={device}"])
    except SystemExit as e:   # scale.py exits on a failed build: here, one part fails
        raise RuntimeError(str(e)) from None


def _rows_and_top1(folder: Path, nprobe: int, queries: np.ndarray):
    """(each row's list, each row's code (n, code_size), each query's top-1 by the codes alone)
    of the merged index in `folder`."""
    import faiss
    from geoalign_store.retrieval import load_merged, search
    index = load_merged(folder, nprobe, 0)
    lists = faiss.extract_index_ivf(index.index).invlists
    where = np.full(index.ntotal, -1, np.int64)
    codes = np.zeros((index.ntotal, lists.code_size), np.uint8)
    for number in range(lists.nlist):
        size = lists.list_size(number)
        if size:
            ids = faiss.rev_swig_ptr(lists.get_ids(number), size).copy()
            where[ids] = number
            codes[ids] = faiss.rev_swig_ptr(lists.get_codes(number), size * lists.code_size).reshape(size, -1)
    return where, codes, search(index, queries, 1)[1][:, 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny backbone and sizes (runs on a CPU)")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds; later parts are skipped")
    ap.add_argument("--peak-tflops", type=float, default=790.0, help="dense bf16 peak of the GPU")
    ap.add_argument("--parts", default="extract,diff,fit,score,faiss,faiss_add,compile")
    args = ap.parse_args()
    args.device = args.device or ("cpu" if args.smoke else "cuda")
    cfg = SMOKE if args.smoke else FULL
    start = time.perf_counter()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") and torch.cuda.is_available() else "no GPU"
    print(f"benchmarks/gpu.py{' --smoke' if args.smoke else ''}: device {args.device} ({name}), torch "
          f"{torch.__version__}, {os.cpu_count()} CPUs, budget {args.budget:.0f} s")
    parts = {"extract": ("1. extract (fixed cost, steady state, bare forward)", part_extract),
             "diff": ("2. bf16 vs fp32 descriptors", part_bf16_diff),
             "fit": ("3. fit-heads default recipe, University-1652 size", part_fit),
             "score": ("4. score, University-1652 size", part_score),
             "faiss": ("5. faiss IVF-PQ", lambda a, c, _tmp: part_faiss(a, c)),
             "faiss_add": ("5b. index=ivfpq's shards added on the GPU vs the CPU", part_gpu_add),
             "compile": ("6. extract compile=true (torch.compile of the blocks)", part_compile)}
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.parts.split(","):
            title, fn = parts[key]
            spent = time.perf_counter() - start
            print(f"\n{title}  [t = {spent:.0f} s]", flush=True)
            if spent > args.budget:
                print(f"  skipped: the {args.budget:.0f} s budget is spent")
                continue
            try:
                fn(args, cfg, Path(tmp))
            except Exception:  # noqa: BLE001  (one part's failure must not stop the others)
                print("  FAILED:\n    " + traceback.format_exc().strip().replace("\n", "\n    "))
            sys.stdout.flush()
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
