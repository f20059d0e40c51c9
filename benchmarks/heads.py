"""Heads across the simulator family: every candidate, the label-free selection and the references.

    python benchmarks/heads.py --family all [--seeds 0 1 2] [--epochs N] [--no-agra] [--json OUT]

For each family and seed: simulate (arrays, no store), run the selection of fit-heads' default
recipe (geoalign_store.method.selection: candidates fitted without the held-out flights, the criterion,
the do-no-harm rule), then score on the test split (official metrics, D2S): raw, centred (each
view's test mean), every candidate, the selected heads and the supervised oracles. Prints a table
family x variant (mean +- std over seeds of D2S R@1 and AP), the issue's checks, and the
criterion's Spearman rank correlation with the true test R@1 over every (family, seed, candidate).
`--paper` adds the release's recipe (preset=paper: self-taught AGRA + ISMS, fused at 0.5), run
through the simulate / fit-heads / score stages on a store of the same simulation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from geoalign_store.config import compose, to_plain
from geoalign_store.method import AgraRecipe, SelectionConfig, TrainViews, agra_candidate, select
from geoalign_store.retrieval import raw_embedding, retrieval_metrics
from geoalign_store.sim import FAMILIES, LAYERS, baselines, generate

DEFAULT = compose("fit-heads")          # the default recipe (preset=improved), as fit-heads runs it


def _desc(arrays: dict) -> dict:
    return {k: arrays[f"layer_{k}/desc"] for k in LAYERS}


def test_metrics(embed, data) -> dict:
    q, g = data["test", "drone"], data["test", "satellite"]
    m = retrieval_metrics(embed(_desc(q), "drone"), embed(_desc(g), "satellite"), q["labels"], g["labels"])
    return {"r1": m["recall"]["1"], "ap": m["ap"]}


def run_one(family: str, seed: int, args, log) -> dict:
    data, truth = generate(family=family, seed=seed)
    td, ts = data["train", "drone"], data["train", "satellite"]
    views = TrainViews(_desc(ts), _desc(td), td["labels"], LAYERS)
    recipe = AgraRecipe(**{**to_plain(args.recipe.agra), **({"epochs": args.epochs} if args.epochs else {})})
    train_agra = None if args.no_agra else (
        lambda centre, teacher, seen: agra_candidate(centre, teacher, seen, recipe, args.recipe.seed)[0])
    select_cfg = SelectionConfig.from_config(to_plain(args.recipe.select))
    t0 = time.perf_counter()
    sel = select(views, select_cfg, args.recipe.seed, train_agra, log=lambda *_: None)
    fit_s = time.perf_counter() - t0
    ref = baselines(data, truth)
    rows = {"raw": test_metrics(raw_embedding, data), "centred (test means)": {"r1": ref["centred"]}}
    for name, heads in sel.fitted.items():
        rows[name] = {**test_metrics(heads.embed, data), "criterion": sel.estimates[name]}
    rows["SELECTED"] = {**test_metrics(sel.heads.embed, data), "chosen": sel.chosen}
    if args.paper:
        rows["paper recipe (preset=paper)"] = paper_recipe(family, seed)
    rows["oracle (supervised ridge)"] = {"r1": ref["oracle"]}
    if "oracle_regime" in ref:
        rows["oracle (per-regime ridge, true regime)"] = {"r1": ref["oracle_regime"]}
    log(f"{family} seed {seed}: chosen {sel.chosen} ({sel.reason}); test R@1 "
        f"{rows['SELECTED']['r1']:.3f}, centre {rows['centre']['r1']:.3f}; fit {fit_s:.0f} s")
    return rows


def paper_recipe(family: str, seed: int) -> dict:
    import tempfile
    from pipelines import fit_heads, score, simulate
    with tempfile.TemporaryDirectory() as tmp:
        store = f"{tmp}/sim.zarr"
        simulate.run(compose("simulate", [f"store={store}", f"family={family}", f"seed={seed}"]))
        fit_heads.run(compose("fit-heads", [f"store={store}", "preset=paper"]))
        m = score.run(compose("score", [f"store={store}", "mode=D2S", "pictures=0"]))
    return {"r1": m["recall"]["1"], "ap": m["ap"]}


def spearman(x, y) -> float:
    rx, ry = (np.argsort(np.argsort(v)).astype(float) for v in (x, y))
    return float(np.corrcoef(rx, ry)[0, 1])


def report(results: dict) -> None:
    for family, per_seed in results.items():
        print(f"\n### {family}\n\n| variant | D2S R@1 | D2S AP | criterion |\n|---|---:|---:|---:|")
        for name in per_seed[0]:
            cells = []
            for key in ("r1", "ap", "criterion"):
                vals = [100 * s[name][key] for s in per_seed if key in s.get(name, {})]
                cells.append(f"{np.mean(vals):.1f} ± {np.std(vals):.1f}" if len(vals) == len(per_seed) else "-")
            print(f"| {name} | " + " | ".join(cells) + " |")
        print("\nchosen: " + ", ".join(s["SELECTED"]["chosen"] for s in per_seed))
    checks(results)


def checks(results: dict) -> None:
    crit, true = [], []
    print("\n| family | selected | best candidate | centre | selected - best | min over seeds of selected - centre |")
    print("|---|---:|---:|---:|---:|---:|")
    for family, per_seed in results.items():
        # fused candidates are named after each seed's teacher space: only those every seed has
        names = [n for n in per_seed[0] if all("criterion" in s.get(n, {}) for s in per_seed)]
        mean = {n: np.mean([s[n]["r1"] for s in per_seed]) for n in names + ["SELECTED"]}
        best = max(names, key=mean.get)
        worst = min(s["SELECTED"]["r1"] - s["centre"]["r1"] for s in per_seed)
        print(f"| {family} | {100 * mean['SELECTED']:.1f} | {100 * mean[best]:.1f} ({best}) | "
              f"{100 * mean['centre']:.1f} | {100 * (mean['SELECTED'] - mean[best]):+.1f} | {100 * worst:+.1f} |")
        for s in per_seed:
            crit += [s[n]["criterion"] for n in s if "criterion" in s[n]]
            true += [s[n]["r1"] for n in s if "criterion" in s[n]]
    print(f"\ncriterion vs true test R@1: Spearman {spearman(crit, true):.3f} over {len(crit)} "
          "(family, seed, candidate)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="all", help=f"all or one of {', '.join(FAMILIES)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="AGRA epochs (default: the recipe's)")
    parser.add_argument("--no-agra", action="store_true", help="skip the AGRA candidate (fast)")
    parser.add_argument("--paper", action="store_true", help="also run preset=paper through the stages")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="fit-heads overrides of the recipe measured (e.g. select.null_adjust=true)")
    args = parser.parse_args()
    args.recipe = compose("fit-heads", args.set) if args.set else DEFAULT
    families = FAMILIES if args.family == "all" else [args.family]
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    results = {f: [run_one(f, seed, args, log) for seed in args.seeds] for f in families}
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    report(results)


if __name__ == "__main__":
    main()
