"""The label-free criterion's estimates against the truth they estimate, on many worlds (issue 24).

    python benchmarks/criterion.py --family random --worlds 30 [--json OUT]
    python benchmarks/criterion.py --family flightshift --seeds 0
    python benchmarks/criterion.py --report OUT

Per world: the selection's split (`holdouts`, its seed), every candidate of the default recipe
fitted without the held-out regions (`Selection.fitted`, AGRA left out), then, for each way of estimating, every candidate's criterion next to the true R@1 of the
question it asks (the held-out regions' drones among every train satellite, scored with the
simulator's labels) and its test R@1. The estimates (all through `criterion.read`):

- `seen_first` / `seen_on_seen` / `joint`: `select.held_pairing` (the seen flights claim satellites
  first; the same without their claims on held-out satellites; all flights assigned together), each raw and `- null` (minus the score against 4 reflected
  satellite sets: `select.null_adjust=true`) and `/ null` ((raw - null) / (1 - null): the agreement
  beyond chance as a share of what chance leaves, Cohen's kappa's correction; not a recipe key).
- `..., held null`: the same pairing, its null turning only the held-out satellites (the seen
  flights keep their real satellites to compete for: `Rows(null_of="held")`, not a recipe key).

Reported per estimate, over the worlds: the bias per candidate kind (criterion minus the true
held-out R@1: mean / most pessimistic / most flattering, in points), the Spearman with the true
held-out R@1 and with the test R@1 (median, worst), and the test R@1 of the candidate it rates
highest (no one-standard-error rule, no gate: what the estimate alone would choose), with the
worlds where that falls more than 1 point below centring. Judge an estimate here on worlds drawn
at random, then confirm the recipe it implies with `benchmarks/heads.py` (the whole selection).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from heads import DEFAULT, _desc, held_out_r1, kind, spearman, test_metrics
from geoalign_store.config import to_plain
from geoalign_store.method import NULL_TURNS, Rows, SelectionConfig, TrainViews, Turns, holdouts, read, select
from geoalign_store.sim import LAYERS, generate

# estimate -> (select.held_pairing, which satellites the null turns: all, or the held-out ones only)
PAIRINGS = {"seen_first": ("seen_first", "all"), "seen_on_seen": ("seen_on_seen", "all"),
            "joint": ("joint", "all"), "seen_first, held null": ("seen_first", "held"),
            "joint, held null": ("joint", "held")}
CORRECTIONS = {"": lambda real, null: real, " - null": lambda real, null: real - null,
               " / null": lambda real, null: (real - null) / max(1.0 - null, 1e-9)}


def measure(family: str, seed: int) -> dict:
    """{candidate: {"held": true held-out R@1, "test": test R@1, pairing: (raw, null)}}."""
    data, truth = generate(family=family, seed=seed)
    td, ts = data["train", "drone"], data["train", "satellite"]
    views = TrainViews(_desc(ts), _desc(td), td["labels"], LAYERS)
    cfg = SelectionConfig.from_config(to_plain(DEFAULT.select))
    split, _ = holdouts(views, cfg, DEFAULT.seed)
    turns = [Turns(DEFAULT.seed, i) for i in range(NULL_TURNS)]
    rows = {p: Rows(views, split, pairing=pairing, null_of=null_of) for p, (pairing, null_of) in PAIRINGS.items()}
    out = {}
    for name, heads in select(views, cfg, DEFAULT.seed, None, log=lambda *_: None).fitted.items():
        out[name] = {"held": held_out_r1(heads, views, split.drone, ts["labels"], truth["train_drone_loc"]),
                     "test": test_metrics(heads.embed, data)["r1"]}
        for pairing, r in rows.items():
            real, *nulls = read(heads, r, turns, True).scores()
            out[name][pairing] = (float(real.mean()), float(np.mean(nulls)))
    return out


def estimates(world: dict) -> dict:
    """{estimate name: {candidate: criterion}}."""
    first = next(iter(world.values()))
    return {f"{p}{c}": {n: fix(*row[p]) for n, row in world.items()}
            for p in PAIRINGS if p in first for c, fix in CORRECTIONS.items()
            if not (c == "" and PAIRINGS[p][1] == "held")}   # raw: the same as its pairing's


def report(results: dict) -> None:
    worlds = list(results)
    per = {w: estimates(results[w]) for w in worlds}
    print(f"{len(worlds)} worlds; bias = criterion - true held-out R@1 (points): mean / most pessimistic / most flattering")
    for est in per[worlds[0]]:
        bias, sp_held, sp_test, picked, below = {}, [], [], [], []
        for w in worlds:
            world, crit = results[w], per[w][est]
            names = list(world)
            c = np.array([crit[n] for n in names])
            sp_held.append(spearman(c, [world[n]["held"] for n in names]))
            sp_test.append(spearman(c, [world[n]["test"] for n in names]))
            top = names[int(np.argmax(c))]
            picked.append(world[top]["test"])
            if world[top]["test"] < world["centre"]["test"] - 0.01:
                below.append(w)
            for n in names:
                bias.setdefault(kind(n), []).append(100 * (crit[n] - world[n]["held"]))
        print(f"{est:18s} top-rated test R@1 {100 * np.mean(picked):.1f} (centring "
              f"{100 * np.mean([results[w]['centre']['test'] for w in worlds]):.1f}); below centring by >1 point: "
              f"{len(below)} {below}; Spearman held median {np.median(sp_held):.3f} worst {min(sp_held):.3f}, "
              f"test median {np.median(sp_test):.3f} worst {min(sp_test):.3f}")
        print(" " * 19 + "bias: " + ", ".join(f"{k} {np.mean(b):+.1f} / {min(b):+.1f} / {max(b):+.1f}"
                                              for k, b in bias.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="random")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--worlds", type=int, default=None, help="seeds 0..N-1")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parser.add_argument("--report", type=Path, nargs="+", default=None, help="only report --json files")
    args = parser.parse_args()
    if args.report:
        return report({k: v for path in args.report for k, v in json.loads(path.read_text()).items()})
    results = {}
    for seed in range(args.worlds) if args.worlds else args.seeds:
        t0 = time.perf_counter()
        results[f"{args.family}:{seed}"] = measure(args.family, seed)
        print(f"{args.family} {seed}: {len(results[f'{args.family}:{seed}'])} candidates, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        if args.json:   # after every world, so that a long run's partial results are kept
            args.json.write_text(json.dumps(results))
    report(results)


if __name__ == "__main__":
    main()
