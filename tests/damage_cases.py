"""Generated bad input, shared by tests/test_badinput.py (a few seeded cases) and
benchmarks/badinput.py (many): a store that went through every stage, each of its files damaged
in turn, every stage run again through the CLI as a user meets it.

A case passes when every stage exits 0 (it repaired the file, or did not need it) or 2 with a
message naming the damaged file (or the Zarr node that holds it), `check` may also exit 1 (its
"damage found"), no run is an unexpected error (exit 1 + crash log) or prints a traceback, and
every file that was intact is byte-identical afterwards (those a rerun rewrites differently,
VOLATILE, aside).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from typer.testing import CliRunner

from conftest import extract_overrides, make_folder_dataset
from pipelines.cli import app

KINDS = ("truncated", "emptied", "garbage", "deleted")
# rewritten on every run with content that is not a function of the inputs alone (timings)
VOLATILE = ("report.md",)


def cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@dataclass
class Scene:
    store: Path
    data: Path
    photo: Path

    def stages(self) -> list[tuple[str, list]]:
        """Every stage, readers first (extract, which repairs, last), as a user would rerun them."""
        s = f"store={self.store}"
        return [("check", ["check", s]),
                ("locate", ["locate", self.photo, s, "pictures=false"]),
                ("score", ["score", s, "index=hnsw", "pictures=1"]),
                ("score-S2D", ["score", s, "--mode", "S2D", "heads=none", "pictures=1"]),
                ("index", ["index", s, "index=hnsw"]),
                ("fit-heads", ["fit-heads", s, *FIT]),
                ("extract", ["extract", *extract_overrides(self.store, self.data)])]


FIT = ["agra.epochs=2", "agra.checkpoint_every=1", "isms.epochs=2"]


def build_scene(base: Path) -> Scene:
    """A store through extract, fit-heads, index, score (both directions) and locate."""
    data = make_folder_dataset(base / "data")
    scene = Scene(base / "clean.zarr", data, data / "test/drone/0100/view-00.png")
    order = ("extract", "fit-heads", "index", "score", "score-S2D", "locate", "check")
    for name, args in sorted(scene.stages(), key=lambda s: order.index(s[0])):
        code, out = cli(*args)
        assert code == 0, f"{name}: {out}"
    return scene


def snapshot(store: Path) -> dict[str, str]:
    return {str(p.relative_to(store)): _digest(p) for p in sorted(store.rglob("*")) if p.is_file()}


def _digest(path: Path) -> str:
    """sha256 of a file; of a score's metrics.json, without `inputs` (the digest of what it read,
    which a damaged chunk it did not need changes while every metric stays the same); of an
    index.json, without its build time."""
    data = path.read_bytes()
    if path.name in ("metrics.json", "index.json"):  # and an index's build time
        try:
            doc = json.loads(data)
            doc.pop("inputs" if path.name == "metrics.json" else "build_s", None)
            data = json.dumps(doc, sort_keys=True).encode()
        except ValueError:
            pass
    return hashlib.sha256(data).hexdigest()


def damage(path: Path, kind: str, rng: random.Random) -> None:
    data = path.read_bytes()
    if kind == "deleted":
        path.unlink()
    elif kind == "emptied":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[:rng.randrange(len(data))] if data else b"")
    else:
        path.write_bytes(rng.randbytes(max(16, len(data))))


def names(relative: str) -> list[str]:
    """What a message may name for a damaged file: the file, or the Zarr node holding it (a
    chunk's array, a zarr.json's node), with or without its features/<dataset>/ prefix."""
    parts = relative.split("/")
    if "c" in parts:
        parts = parts[:parts.index("c")]
    elif parts[-1] == "zarr.json":
        parts = parts[:-1]
    node = "/".join(parts)
    found = [relative] + ([node] if node else [])
    if node.startswith("features/"):
        found.append("/".join(parts[2:]))
    return [n for n in found if n]


def named(relative: str, text: str) -> bool:
    """`text` (whitespace removed) names the file, its node, or its view and array apart (check's
    "damaged: features/d/test/drone block 1 ...: layer_28/desc: ...")."""
    if any("".join(n.split()) in text for n in names(relative)):
        return True
    parts = names(relative)[1].split("/") if len(names(relative)) > 1 else []
    return len(parts) > 4 and "/".join(parts[:4]) in text and "/".join(parts[4:]) in text


@dataclass
class Outcome:
    file: str
    kind: str
    runs: list[tuple[str, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)


def run_case(scene: Scene, baseline: dict[str, str], work: Path, relative: str, kind: str,
             seed: int) -> Outcome:
    """Damage `relative` of a copy of the scene's store in `kind` way, run every stage on it."""
    store = work / "store.zarr"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(scene.store, store)
    damage(store / relative, kind, random.Random(seed))
    case = Scene(store, scene.data, scene.photo)
    outcome = Outcome(relative, kind)
    for name, args in case.stages():
        code, out = cli(*args)
        outcome.runs.append((name, code))
        flat = "".join(out.split())
        if "Traceback" in out or "unexpectederror" in flat:
            outcome.problems.append(f"{name}: traceback or unexpected error: {out[-600:]}")
        elif code not in ((0, 1, 2) if name == "check" else (0, 2)):
            outcome.problems.append(f"{name}: exit {code}: {out[-600:]}")
        elif code in (1, 2) and not named(relative, flat):
            outcome.problems.append(f"{name}: exit {code} without naming {relative}: {out[-600:]}")
    after = snapshot(store)
    outcome.changed = [f for f, digest in baseline.items() if f != relative
                       and not f.endswith(VOLATILE) and after.get(f) != digest]
    shutil.rmtree(store, ignore_errors=True)
    return outcome


def case_files(baseline: dict[str, str]) -> list[str]:
    return sorted(baseline)


def env_threads() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
