"""Generated kills, shared by tests/test_badinput.py (one seeded moment per stage) and
benchmarks/badinput.py (many): a writing stage run as a user runs it, SIGKILLed at a random
moment of its run, then run again to the end; its outputs must equal an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def stage_process(args: list) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def finish(args: list) -> float:
    t0 = time.perf_counter()
    proc = stage_process(args)
    err = proc.communicate()[1].decode()
    assert proc.returncode == 0, f"{args[0]} exited {proc.returncode}: {err[-2000:]}"
    return time.perf_counter() - t0


def outputs(store: Path, prefixes: tuple[str, ...]) -> dict[str, str]:
    """Digests of the files under `prefixes` of the store: chunks, metadata and artefacts, with
    what is not a result (timings; temp files a kill left) left out."""
    found = {}
    for path in sorted(store.rglob("*")):
        rel = str(path.relative_to(store))
        if not path.is_file() or not rel.startswith(prefixes) or ".tmp" in path.name:
            continue
        if path.suffix == ".md" or path.name in ("checkpoint.safetensors",):
            continue  # report.md carries a wall time; the checkpoint is gone once training ends
        data = path.read_bytes()
        if path.suffix == ".json":  # the store's own path (in configs) is not a result either
            doc = json.loads(data.decode().replace(str(store), "<store>"))
            for key in ("build_s", "wall_s", "timings"):
                doc.pop(key, None) if isinstance(doc, dict) else None
            data = json.dumps(doc, sort_keys=True).encode()
        elif path.suffix == ".safetensors":
            data = _tensors_digest(path).encode()
        found[rel] = hashlib.sha256(data).hexdigest()
    return found


def _tensors_digest(path: Path) -> str:
    """Tensors and metadata (the bytes of two equal files may differ in their header's order)."""
    from safetensors import safe_open
    digest = hashlib.sha256()
    with safe_open(str(path), framework="np") as f:
        digest.update(json.dumps(f.metadata(), sort_keys=True).encode())
        for key in sorted(f.keys()):
            digest.update(key.encode() + f.get_tensor(key).tobytes())
    return digest.hexdigest()


@dataclass
class KillOutcome:
    stage: str
    delay_s: float
    killed: bool          # False when the run ended before the moment drawn
    same: bool
    differ: list


def kill_case(stage: str, template: Path | None, work: Path, args_for, prefixes, seed: int) -> KillOutcome:
    """`args_for(store)` -> CLI args. The stage runs uninterrupted on a copy of `template` (None:
    a new store), then on another copy it is killed `uniform(0, 1.1 x that run's wall time)`
    seconds after it starts, and rerun; the two copies' outputs must be the same."""
    full, killed = work / "full.zarr", work / "killed.zarr"
    for store in (full, killed):
        shutil.rmtree(store, ignore_errors=True)
        if template is not None:
            shutil.copytree(template, store)
    wall_s = finish(args_for(full))
    delay = random.Random(seed).uniform(0, 1.1 * wall_s)
    proc = stage_process(args_for(killed))
    time.sleep(delay)
    hit = proc.poll() is None
    if hit:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finish(args_for(killed))
    a, b = outputs(full, prefixes), outputs(killed, prefixes)
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return KillOutcome(stage, round(delay, 3), hit, not differ, differ)


def writing_stages(base: Path) -> dict:
    """stage -> (template store or None, args_for(store), output prefixes), on small inputs."""
    from conftest import extract_overrides, make_folder_dataset, write_plain_store, write_train_split
    data = make_folder_dataset(base / "data", n_locations=6)
    plain = write_train_split(write_plain_store(base / "plain.zarr", dim=40))
    return {
        "extract": (None, lambda s: ["extract", *extract_overrides(s, data, "block_size=2", "batch_size=2")],
                    ("features",)),
        "simulate": (None, lambda s: ["simulate", f"store={s}", "train_locs=40", "test_locs=40"],
                     ("features",)),
        "fit-heads": (plain, lambda s: ["fit-heads", f"store={s}", "preset=paper", "agra.epochs=60",
                                        "agra.checkpoint_every=7", "isms.epochs=3"], ("artefacts/heads",)),
        "index": (plain, lambda s: ["index", f"store={s}", "index=hnsw", "heads=none"], ("artefacts/indices",)),
        "score": (plain, lambda s: ["score", f"store={s}", "heads=none", "pictures=2"],
                  ("artefacts/scores", "scores")),
    }
