"""Generated bad input, many cases (issue 22): the damage cases of tests/test_badinput.py at
N x the CI count, and random overrides composed for every stage. Prints counts per kind:
cases tried, tracebacks or unexpected errors seen, wrong exit codes or unnamed files, runs whose
intact results changed (goal: 0 for all but the first).

    python benchmarks/badinput.py --damage 80 --overrides 2000 --kills 3 --seed 0
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from damage_cases import KINDS, build_scene, cli, run_case, snapshot  # noqa: E402
from kill_cases import kill_case, writing_stages  # noqa: E402
from geoalign_store.config import ConfigError, compose, valid_keys  # noqa: E402

STAGES = ["extract", "fit-heads", "import-heads", "index", "score", "locate", "check", "simulate", "demo"]
GARBAGE = ["", "abc", "-1", "0", "1e400", "nan", ".inf", "[", "{a:", "!!python/object:os.system",
           "[1, [2]]", "{m:4}", "~", "true", "é☃\x00", "x" * 300, "99999999999999999999", "3.5",
           "[26, 'a']", "{}", "auto", "[]", "null", "D2S"]


def damage_run(n: int, seed: int, base: Path) -> Counter:
    scene = build_scene(base)
    for _, args in scene.stages():
        cli(*args)
    baseline = snapshot(scene.store)
    cases = [(f, k) for f in sorted(baseline) for k in KINDS]
    random.Random(seed).shuffle(cases)
    counts: Counter = Counter()
    for i, (relative, kind) in enumerate(cases[:n]):
        outcome = run_case(scene, baseline, base / "work", relative, kind, seed + i)
        counts["cases"] += 1
        counts[f"cases {kind}"] += 1
        counts["stage runs"] += len(outcome.runs)
        counts["tracebacks or unexpected errors"] += sum("traceback" in p for p in outcome.problems)
        counts["wrong exit or file not named"] += sum("traceback" not in p for p in outcome.problems)
        counts["runs whose intact results changed"] += bool(outcome.changed)
        for name, code in outcome.runs:
            counts[f"exit {code}"] += 1
        if outcome.problems or outcome.changed:
            print(f"FAIL {relative} {kind}: {outcome.problems[:1]} {outcome.changed[:3]}", flush=True)
    counts["files in the store"] = len(baseline)
    return counts


def overrides_run(n: int, seed: int) -> Counter:
    rng = random.Random(seed)
    keys = {s: valid_keys(compose(s, [])) for s in STAGES}
    counts: Counter = Counter()
    for _ in range(n):
        stage = rng.choice(STAGES)
        overrides = [f"{rng.choice(keys[stage] + ['nope', 'index_params.m', 'a.b'])}={rng.choice(GARBAGE)}"
                     for _ in range(rng.randint(1, 4))]
        counts["cases"] += 1
        try:
            compose(stage, overrides)
            counts["composed"] += 1
        except ConfigError:
            counts["refused (ConfigError)"] += 1
        except Exception as e:  # noqa: BLE001 - what is counted here is exactly this
            counts["tracebacks or unexpected errors"] += 1
            print(f"FAIL {stage} {overrides}: {type(e).__name__}: {e}", flush=True)
    return counts


def kills_run(seeds: int, seed: int, base: Path) -> Counter:
    """Every writing stage, SIGKILLed at `seeds` random moments each, rerun, compared."""
    counts: Counter = Counter()
    stages = writing_stages(base)
    for name, (template, args_for, prefixes) in stages.items():
        for k in range(seeds):
            work = base / f"{name}-{k}"
            work.mkdir()
            outcome = kill_case(name, template, work, args_for, prefixes, seed * 1000 + k)
            counts["cases"] += 1
            counts[f"cases {name}"] += 1
            counts["killed before the end"] += outcome.killed
            counts["reruns that differ from an uninterrupted run"] += not outcome.same
            if not outcome.same:
                print(f"FAIL kill {name} at {outcome.delay_s} s: {outcome.differ[:5]}", flush=True)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--damage", type=int, default=80, help="damage cases (CI runs 8)")
    parser.add_argument("--overrides", type=int, default=2000, help="override lists composed")
    parser.add_argument("--kills", type=int, default=3, help="random kill moments per writing stage")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("GEOALIGN_CACHE", tempfile.mkdtemp(prefix="geoalign-bench-cache-"))
    t0 = time.perf_counter()
    print("overrides:", dict(overrides_run(args.overrides, args.seed)), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        print("damage:", dict(damage_run(args.damage, args.seed, Path(tmp))), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        print("kills:", dict(kills_run(args.kills, args.seed, Path(tmp))), flush=True)
    print(f"wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
