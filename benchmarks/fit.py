"""fit-heads at University-1652 size: the whole default recipe, and seconds per AGRA epoch.

**Default recipe** (what ``geoalign fit-heads`` runs; always): simulated train descriptors of
University-1652's size (manifold family: 700 satellites, 700 flights x 54 drones = 37,800 drone
rows, C = 1280, layers 26/28), then ``selection.select`` with the default config and the AGRA
candidate (``preset=improved``: flight teacher, its epochs), i.e. every candidate, the criterion
and the refit. Prints the wall time and its breakdown against the 5-minute target.

**Per-epoch comparison** (``--compare``): geoalign's ``fit_agra`` vs the release design:

One epoch = one optimiser step on all 701 train satellites + one drone drawn from each of 700 drone
groups (54 rows each, 37,800 drone rows), C = 1280, random L2-normalised descriptors, fp32, CPU.

* **geoalign**: ``new_agra_state`` + ``fit_agra`` with ``AgraRecipe.defaults(epochs=warmup + epochs)``, i.e.
  the real training loop (group draw, warm-up/cosine lr, epsilon curriculum, log-domain Sinkhorn
  OTCA, DAMO distillation + reliable matching, L1 reconstruction, load-balance aux, value clipping,
  CautiousAdamW).  Per-epoch times come from its ``on_epoch`` hook.  ``--teacher isms`` (the
  default preset's recipe) replaces the per-step OT plan with the flight-level teacher: its
  first plan and one rebuild (AGRA on 701 satellites + 8 drones of each flight) are timed apart
  and added to the projected total once and (total - 1) // 50 times; the "ISMS" embeddings are
  the descriptors themselves here (1280 dimensions where fit-heads has ~24: an upper bound).
* **release design**: :class:`benchmarks.fit_modules.ReleaseStyleAGRA` (expert loops over routing
  masks, ``nn.MultiheadAttention``), same initial weights, same drone draws, the same losses
  (plain ``torch.logsumexp`` log-domain Sinkhorn targets, distillation, matching, L1
  reconstruction, 0.01 x aux) plus the release's cycle pass (``enc(dec(sat))`` through the drone
  MoE, ``enc(dec(drone))`` as satellite; computed, unused), torch's ``AdamW`` with its defaults,
  value clipping.  ``--no-cycle`` drops the cycle pass.

The two are interleaved (one geoalign epoch, then one release step, ...) so that a busy machine
hurts both alike; the first ``--warmup`` epochs of each are not timed.  Medians are reported, with
the load average before and after: on a machine shared with other jobs, wall times above the CPU
times / threads mean the run was starved.

    python benchmarks/fit.py [--compare [--epochs 5] [--warmup 1] [--no-cycle] [--profile]
                             [--teacher isms|self]] [--threads N] [--device auto|cpu|cuda[:N]]
                             [--pages both] [--set KEY=VALUE ...]

Torch's large tensors go on huge pages as the CLI has them (features/host_memory.py) unless
``THP_MEM_ALLOC_ENABLE=0``; ``--pages both`` runs the default recipe without them, then with them,
one after the other in child processes (torch reads the switch once), and prints the ratio.

``--device`` (default cpu) is fit-heads' ``device=``: where AGRA trains (and the ISMS teacher's
embeddings run); with ``--compare`` on a GPU the release design is not run (it is a CPU figure).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from geoalign_store.features import use_huge_pages

use_huge_pages()   # as the CLI does; before torch loads (it reads the switch once)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fit_modules, when run as a script

from fit_modules import ReleaseStyleAGRA  # noqa: E402

from geoalign_store import method as al  # noqa: E402  (the alignment losses, through the face)
from geoalign_store.method import (AgraRecipe, FlightTeacher, draw_one_per_group, fit_agra,  # noqa: E402
                                   group_index, new_agra_state)

TARGET_MINUTES = 5.0
TARGET_SPEEDUP = 1.8


def make_data(n_sat: int, n_groups: int, per_group: int, dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    sat = F.normalize(torch.randn(n_sat, dim, generator=g), dim=1)
    drone = F.normalize(torch.randn(n_groups * per_group, dim, generator=g), dim=1)
    groups = np.repeat(np.arange(n_groups), per_group)
    return sat, drone, groups


@torch.no_grad()
def sinkhorn_plain(cost: torch.Tensor, epsilon: float, n_iter: int) -> torch.Tensor:
    """Textbook log-domain Sinkhorn (uniform marginals, logsumexp per half-iteration)."""
    n, m = cost.shape
    log_k = -cost / epsilon
    log_v = cost.new_zeros(m)
    for _ in range(n_iter):
        log_u = -math.log(n) - torch.logsumexp(log_k + log_v[None, :], dim=1)
        log_v = -math.log(m) - torch.logsumexp(log_k + log_u[:, None], dim=0)
    return (log_k + log_u[:, None] + log_v[None, :]).exp()


class ReleaseTrainer:
    """One release-design training step per call, with the recipe of ``AgraRecipe``."""

    def __init__(self, model, sat, drone, groups, recipe: AgraRecipe, seed: int, cycle: bool):
        self.model, self.sat, self.drone, self.recipe, self.cycle = model.train(), sat, drone, recipe, cycle
        self.log_scale = torch.nn.Parameter(torch.tensor(float(np.log(recipe.scale_init))))
        self.opt = torch.optim.AdamW(list(model.parameters()) + [self.log_scale], lr=recipe.lr,
                                     weight_decay=recipe.weight_decay)
        self.index = group_index(groups)
        self.sampler = torch.Generator().manual_seed(seed + 1)  # same draws as new_agra_state
        self.last: dict = {}

    def step(self, epoch: int) -> None:
        r, model = self.recipe, self.model
        lr = al.warmup_cosine(epoch, r.epochs, r.warmup_epochs, r.lr)
        for group in self.opt.param_groups:
            group["lr"] = lr
        sat, drone = self.sat, self.drone[draw_one_per_group(self.index, self.sampler)]
        eps = al.epsilon_schedule(epoch, r.epochs, r.eps_start, r.eps_end)
        za = model.encode_satellite(sat)
        zb, aux = model.encode_drone(drone)
        S = F.normalize(za, dim=-1) @ F.normalize(zb, dim=-1).T
        plan = sinkhorn_plain(1.0 - S.detach(), eps, r.sinkhorn_iters)
        scale = self.log_scale.exp()
        distill = al.distillation_loss(S, *al.soft_targets(plan), scale)
        pairs = al.reliable_pairs(plan, S.detach(), r.match_threshold)
        match = al.matching_loss(S, *pairs, scale, r.label_smoothing)
        recon = F.l1_loss(model.decode(za), sat) + F.l1_loss(model.decode(zb), drone)
        loss = (r.recon_weight * recon + r.aux_weight * aux + r.distill_weight * distill
                + r.match_weight * match)
        if self.cycle:  # release run_train: computed, never used by its losses
            zab, _ = model.encode_drone(model.decode(za))
            zba = model.encode_satellite(model.decode(zb))
            loss = loss + 0.0 * (model.decode(zab).sum() + model.decode(zba).sum())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), r.clip_value)
        self.opt.step()
        self.last = {"total": float(loss.detach()), "pairs": len(pairs[0])}


def profile_ours(sat, drone, groups, dim, seed, top):
    """torch.profiler over one geoalign epoch (after one untimed epoch), top ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile
    recipe = AgraRecipe.defaults(epochs=2)
    state = new_agra_state(dim, recipe, seed)
    fit_agra(state, sat, drone, groups, AgraRecipe.defaults(epochs=1))
    state.model.train()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        fit_agra(state, sat, drone, groups, recipe)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def time_default_recipe(a, overrides=()) -> dict:
    """The default recipe end to end on U1652-sized simulated train arrays (see the docstring).
    `overrides`: fit-heads config overrides (--set; benchmarks/gpu.py --smoke: fewer epochs)."""
    from geoalign_store.config import compose, to_plain
    from geoalign_store.features import resolve_device
    from geoalign_store.method import SelectionConfig, TrainViews, agra_candidate, select
    from geoalign_store.sim import LAYERS, generate
    cfg = compose("fit-heads", list(overrides))
    device = resolve_device(getattr(a, "device", "cpu"))
    t0 = time.perf_counter()
    data, _ = generate(family="manifold", seed=a.seed, dim=a.dim, train_locs=a.groups, views=a.per_group,
                       test_locs=2, distractors=0)
    desc = lambda v: {k: data["train", v][f"layer_{k}/desc"] for k in LAYERS}  # noqa: E731
    views = TrainViews(desc("satellite"), desc("drone"), data["train", "drone"]["labels"], LAYERS)
    print(f"simulated {len(views.groups)} drone rows + {len(views.sat[28])} satellites, C={a.dim}: "
          f"{time.perf_counter() - t0:.0f} s (not part of fit-heads)")
    recipe = AgraRecipe(**to_plain(cfg.agra))
    spent = {"agra": 0.0}

    def train_agra(centre, teacher, seen):
        t = time.perf_counter()
        heads = agra_candidate(centre, teacher, seen, recipe, int(cfg.seed), device=device)[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        spent["agra"] = time.perf_counter() - t
        return heads
    select_cfg = SelectionConfig.from_config(to_plain(cfg.select))
    t0 = time.perf_counter()
    stamp = lambda msg: print(f"  {time.perf_counter() - t0:6.1f} s  {msg}", flush=True)  # noqa: E731
    sel = select(views, select_cfg, int(cfg.seed), train_agra, log=stamp)
    total = time.perf_counter() - t0
    print(f"default recipe{' with ' + ' '.join(overrides) if overrides else ''} (preset=improved, "
          f"agra.epochs={recipe.epochs}, device {device}), selection "
          f"included: {total:.1f} s = {total / 60:.2f} min (AGRA candidate {spent['agra']:.1f} s, everything "
          f"else {total - spent['agra']:.1f} s; {len(sel.estimates)} candidates); chosen {sel.chosen}")
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # KiB on Linux
    pages = "huge pages" if os.environ.get("THP_MEM_ALLOC_ENABLE") == "1" else "4 KiB pages"
    print(f"  peak resident memory {peak_gib:.2f} GiB (torch's large tensors on {pages})")
    if device.type == "cpu":
        print(f"  target <= {TARGET_MINUTES:.0f} min on 2 CPU cores: {'MET' if total <= 60 * TARGET_MINUTES else 'NOT MET'}")
    return {"total_s": total, "agra_s": spent["agra"], "candidates": len(sel.estimates),
            "chosen": sel.chosen, "device": str(device), "peak_gib": peak_gib}


def pages_both(argv: list[str]) -> None:
    """The default recipe with torch's tensors on 4 KiB pages, then on huge pages: one child
    process each (torch reads the switch once), the same arguments otherwise."""
    rest = [x for i, x in enumerate(argv) if x != "--pages" and (i == 0 or argv[i - 1] != "--pages")]
    totals = {}
    for mode, switch in (("4 KiB", "0"), ("huge", "1")):
        child = subprocess.Popen([sys.executable, __file__, *rest], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, env={**os.environ, "THP_MEM_ALLOC_ENABLE": switch})
        lines = []
        for text in child.stdout:    # shown as it comes: a child runs for minutes
            print(text, end="", flush=True)
            lines.append(text)
        child.wait()
        line = next((x for x in lines if x.startswith("default recipe")), "")
        totals[mode] = float(line.split("included: ")[1].split(" s")[0]) if "included: " in line else float("nan")
    print(f"huge pages / 4 KiB pages: {totals['huge']:.1f} s / {totals['4 KiB']:.1f} s = "
          f"{totals['huge'] / totals['4 KiB']:.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--n-sat", type=int, default=701)
    ap.add_argument("--groups", type=int, default=700, help="drone groups (one drone drawn from each per step)")
    ap.add_argument("--per-group", type=int, default=54, help="drone rows per group")
    ap.add_argument("--epochs", type=int, default=5, help="timed epochs per design")
    ap.add_argument("--warmup", type=int, default=1, help="untimed epochs first")
    ap.add_argument("--total-epochs", type=int, default=300, help="epochs of the projected total")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="fit-heads device=: auto | cpu | cuda[:N]")
    ap.add_argument("--no-cycle", action="store_true", help="release design without its unused cycle pass")
    ap.add_argument("--no-release", action="store_true", help="time geoalign only")
    ap.add_argument("--teacher", choices=["isms", "self"], default="isms",
                    help="geoalign's recipe: isms (default preset: flight teacher) | self (the paper's per-step plan)")
    ap.add_argument("--profile", action="store_true", help="also profile one geoalign epoch (torch.profiler)")
    ap.add_argument("--compare", action="store_true", help="per-epoch AGRA: geoalign vs the release design")
    ap.add_argument("--top", type=int, default=25, help="rows of the profile table")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="fit-heads overrides of the recipe timed (e.g. select.confirm_folds=4)")
    ap.add_argument("--pages", choices=["both"], default=None,
                    help="the default recipe on 4 KiB pages, then on huge pages (torch's large tensors)")
    a = ap.parse_args(argv)
    if a.pages:
        return pages_both(sys.argv[1:] if argv is None else list(argv))
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    if not a.compare:
        time_default_recipe(a, a.set)
        return
    load0 = os.getloadavg()

    sat, drone, groups = make_data(a.n_sat, a.groups, a.per_group, a.dim, a.seed)
    n = a.warmup + a.epochs
    recipe = AgraRecipe.defaults(epochs=n, teacher=a.teacher)
    from geoalign_store.features import resolve_device
    device = resolve_device(a.device)
    state = new_agra_state(a.dim, recipe, a.seed, device)
    teacher, teacher_s = None, 0.0
    if a.teacher == "isms":
        teacher = FlightTeacher(sat, drone, sat, drone, groups, recipe.teacher_epsilon, recipe.teacher_iters)
        t0 = time.perf_counter()
        state.teacher = teacher.initial()
        t1 = time.perf_counter()
        teacher.refresh(state.model)
        t2 = time.perf_counter()
        rebuilds = (a.total_epochs - 1) // 50
        teacher_s = (t1 - t0) + rebuilds * (t2 - t1)
        print(f"teacher: first plan {t1 - t0:.2f} s, one rebuild {t2 - t1:.2f} s (x{rebuilds} in {a.total_epochs} epochs)")
    release = None
    if not a.no_release and device.type == "cpu":
        ref = ReleaseStyleAGRA(a.dim)
        ref.load_state_dict(state.model.state_dict())
        release = ReleaseTrainer(ref, sat, drone, groups, recipe, a.seed, cycle=not a.no_cycle)

    times = {"geoalign": [], "release": []}
    cpu = {"geoalign": [], "release": []}
    mark = [time.perf_counter(), time.process_time()]

    def on_epoch(st, record):
        wall, c = time.perf_counter() - mark[0], time.process_time() - mark[1]
        if record["epoch"] >= a.warmup:
            times["geoalign"].append(wall)
            cpu["geoalign"].append(c)
        if release is not None:
            t0, c0 = time.perf_counter(), time.process_time()
            release.step(record["epoch"])
            if record["epoch"] >= a.warmup:
                times["release"].append(time.perf_counter() - t0)
                cpu["release"].append(time.process_time() - c0)
            release.model.train()
        mark[0], mark[1] = time.perf_counter(), time.process_time()

    fit_agra(state, sat, drone, groups, recipe, on_epoch=on_epoch)  # state.teacher: the plan, kept
    load1 = os.getloadavg()

    print(f"fit-heads epoch at University-1652 size: C={a.dim}, {a.n_sat} sat + {a.groups} drones/step "
          f"(from {a.groups} groups x {a.per_group} = {len(drone)} drone rows), fp32 on {device}, "
          f"{a.warmup} warm-up + {a.epochs} timed epochs each (interleaved)")
    print(f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
          f"os.cpu_count() = {os.cpu_count()}, load average (1/5/15 min) before "
          f"{load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, after {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}")
    print(f"geoalign recipe: agra.teacher={a.teacher}" + (f" (teacher plans in {a.total_epochs} epochs: {teacher_s:.2f} s)"
                                                          if teacher is not None else ""))
    last = state.history[-1]
    labels = {"geoalign": "geoalign fit_agra (CautiousAdamW)",
              "release": "release design" + ("" if a.no_cycle else " + cycle pass") + " (torch AdamW)"}
    med = {k: statistics.median(v) for k, v in times.items() if v}
    for k, m in med.items():
        print(f"  {labels[k]:46s} {m:6.3f} s/epoch (min {min(times[k]):.3f}, max {max(times[k]):.3f}, "
              f"cpu {statistics.median(cpu[k]):.3f} s, got ~{statistics.median(cpu[k]) / m:.2f} cores)  -> {a.total_epochs} epochs: "
              f"{m * a.total_epochs:6.1f} s = {m * a.total_epochs / 60:4.1f} min")
    print(f"  geoalign last losses: total {last['total']:.4f}, pairs {last.get('pairs', 0):.0f}"
          + (f"; release: total {release.last['total']:.4f}, pairs {release.last['pairs']}" if release else ""))
    ours_min = (med["geoalign"] * a.total_epochs + teacher_s) / 60
    line = (f"  target: geoalign <= {TARGET_MINUTES:.0f} min for {a.total_epochs} epochs: "
            f"{'MET' if ours_min <= TARGET_MINUTES else 'NOT MET'} ({ours_min:.2f} min)")
    if "release" in med:
        ratio = med["release"] / med["geoalign"]
        line += (f"; speed-up release/geoalign = x{ratio:.2f} (target >= {TARGET_SPEEDUP}): "
                 f"{'MET' if ratio >= TARGET_SPEEDUP else 'NOT MET'}")
    print(line)
    print("  ('got ~x cores' = CPU time / wall time: below the thread count means the process was starved or its "
          "threads waited on each other; OMP_WAIT_POLICY=PASSIVE helps on a shared machine)")
    if a.profile:
        profile_ours(sat, drone, groups, a.dim, a.seed, a.top)


if __name__ == "__main__":
    main()
