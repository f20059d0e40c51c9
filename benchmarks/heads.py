"""Ablations of the heads on the cross-view simulator: mean +- std over seeds of D2S / S2D
R@1 and AP, next to the raw, domain-centred and supervised-oracle references.

    python benchmarks/heads.py [--seeds 0 1 2] [--dim 240] [--epochs 300] [--out DIR]

Each variant is `geoalign fit-heads` with a few recipe keys changed, then `geoalign score`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from geoalign_store.config import compose
from geoalign_store.embeddings import l2n
from geoalign_store.metrics import retrieval_metrics
from geoalign_store.store import open_store, read_layer, read_view
from pipelines import fit_heads, score, simulate

# name -> (fit-heads overrides, score overrides). "paper" = the release's recipe (preset=paper).
P = ["preset=paper"]
VARIANTS = {
    "ISMS only (paper)": (P, ["fusion_weight=0.0"]),
    "AGRA w/o MoE": (P + ["agra.moe=false"], ["fusion=false"]),
    "AGRA full": (P, ["fusion=false"]),
    "AGRA w/o reliable matching": (P + ["agra.matching=false"], ["fusion=false"]),
    "AGRA w/o distillation": (P + ["agra.distill=false"], ["fusion=false"]),
    "AGRA w/o eps curriculum": (P + ["agra.eps_start=0.05"], ["fusion=false"]),
    "fused (GeoAlign*, paper)": (P, []),
    "paper + centring: ISMS only": (P + ["center=true"], ["fusion_weight=0.0"]),
    "paper + centring: AGRA": (P + ["center=true"], ["fusion=false"]),
    "paper + centring: fused": (P + ["center=true"], []),
    "improved: ISMS only": (["preset=improved"], ["fusion_weight=0.0"]),
    "improved: AGRA (flight teacher)": (["preset=improved"], ["fusion=false"]),
    "improved: fused (default)": (["preset=improved"], []),
    "improved, AGRA self-taught: AGRA": (["preset=improved", "agra.teacher=self"], ["fusion=false"]),
    "improved, AGRA self-taught: fused": (["preset=improved", "agra.teacher=self"], []),
    "improved, teacher never rebuilt: fused": (["preset=improved", "agra.teacher_refresh=0"], []),
    "improved, fusion weight 0.5 (no choice)": (["preset=improved"], ["fusion_weight=0.5"]),
    "improved w/o MoE: fused": (["preset=improved", "agra.moe=false"], []),
    "improved w/o reliable matching: fused": (["preset=improved", "agra.matching=false"], []),
    "improved w/o distillation: fused": (["preset=improved", "agra.distill=false"], []),
}


def centred_metrics(store: str, mode: str) -> dict:
    """Domain centring: each view's test descriptors minus that view's mean, per layer."""
    root = open_store(store, mode="r")
    emb = {}
    for view in ("drone", "satellite"):
        meta = read_view(root, "sim", "test", view)
        layers = [l2n(read_layer(root, "sim", "test", view, k)) for k in (26, 28)]
        emb[view] = (l2n(np.concatenate([l2n(x - x.mean(0)) for x in layers], 1)), meta)
    q, g = ("drone", "satellite") if mode == "D2S" else ("satellite", "drone")
    (qe, qm), (ge, gm) = emb[q], emb[g]
    qs, gs = qm["in_query"], gm["in_gallery"]
    return retrieval_metrics(qe[qs], ge[gs], qm["labels"][qs], gm["labels"][gs])


def run_seed(seed: int, args, folder: Path) -> dict:
    store = str(folder / f"sim{seed}.zarr")
    sim = simulate.run(compose("simulate", [f"store={store}", f"seed={seed}", f"dim={args.dim}"]))
    rows = {"raw": {}, "domain-centred": {}}
    for mode in ("D2S", "S2D"):
        rows["raw"][mode] = score.run(compose("score", [f"store={store}", f"mode={mode}",
                                                        "heads=none", "pictures=0"]))
        rows["domain-centred"][mode] = centred_metrics(store, mode)
    fitted = {}
    for name, (fit_over, score_over) in VARIANTS.items():
        key = json.dumps(fit_over)
        if key not in fitted:
            fitted[key] = f"v{len(fitted)}"
            fit_heads.run(compose("fit-heads", [f"store={store}", f"name={fitted[key]}", "seed=42",
                                                f"agra.epochs={args.epochs}", *fit_over]))
        rows[name] = {mode: score.run(compose("score", [f"store={store}", f"mode={mode}", "pictures=0",
                                                        f"heads={fitted[key]}", *score_over]))
                      for mode in ("D2S", "S2D")}
    rows["oracle (supervised)"] = {"D2S": {"recall": {"1": sim["d2s_r1"]["oracle"]}}}
    return rows


def table(per_seed: list[dict]) -> str:
    lines = ["| variant | D2S R@1 | D2S AP | S2D R@1 | S2D AP |", "|---|---:|---:|---:|---:|"]
    for name in per_seed[0]:
        cells = []
        for mode, metric in (("D2S", "r1"), ("D2S", "ap"), ("S2D", "r1"), ("S2D", "ap")):
            values = [100 * (s[name][mode]["recall"]["1"] if metric == "r1" else s[name][mode]["ap"])
                      for s in per_seed if mode in s[name] and (metric == "r1" or "ap" in s[name][mode])]
            cells.append(f"{np.mean(values):.1f} ± {np.std(values):.1f}" if values else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dim", type=int, default=240)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp)
        per_seed = [run_seed(seed, args, folder) for seed in args.seeds]
    mean = lambda k: np.mean([s[k]["D2S"]["recall"]["1"] for s in per_seed])  # noqa: E731
    raw, oracle, centred = mean("raw"), mean("oracle (supervised)"), mean("domain-centred")
    print(f"simulator dim {args.dim}, seeds {args.seeds}, {args.epochs} epochs\n")
    print(table(per_seed))
    for name in ("fused (GeoAlign*, paper)", "improved: fused (default)"):
        print(f"\n{name}: closes {100 * (mean(name) - raw) / (oracle - raw):.1f}% of the raw -> oracle "
              f"D2S R@1 gap, {100 * (mean(name) - centred):+.1f} points vs domain-centred")


if __name__ == "__main__":
    main()
