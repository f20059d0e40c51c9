"""Issue 24 item 4, the experiment that came first: the max-over-maps retrieval rule against the
gate, on the very same maps. The rule is now a candidate of the product (`select.best_of_maps`:
`ridge(K, best of maps)`, method/map_bank.py; scored, indexed and located through
retrieval/multi_vector.py); `benchmarks/heads.py` measures the selection with it.

    python benchmarks/max_over_maps.py 0 30 /tmp/maxmaps.json      # worlds 0..29, ~8 min

For each random world (family=random, the prior frozen in 1acc07e): centring, flight pairs in the
centred space, K orthogonal maps by EM (`method.maps`, as the candidates fit them), at rank 512
and on the whole descriptor; test D2S R@1 with the LDA gate (one map per drone image, what the
candidates do) and with score(d, s) = max_k cos(map_k(d), s). Prints one JSON line a world.
"""
import json
import sys
import time

import numpy as np
import torch

from geoalign_store.method import TrainViews, centring, maps, principal_basis
from geoalign_store.sim import LAYERS, baselines, generate

def desc(a): return {k: a[f"layer_{k}/desc"] for k in LAYERS}
def l2n(x): return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

def r1(sim, ql, gl): return float((gl[sim.argmax(1)] == ql).mean())

def run(seed, ks=(1, 2, 4), ranks=(512, 100000)):
    data, truth = generate(family="random", seed=seed)
    td, ts = data["train", "drone"], data["train", "satellite"]
    views = TrainViews(desc(ts), desc(td), td["labels"], LAYERS)
    centre = centring(views); basis = principal_basis(centre, views)
    q, g = data["test", "drone"], data["test", "satellite"]
    xq = centre.embed(desc(q), "drone"); gs = centre.embed(desc(g), "satellite")
    ql, gl = q["labels"], g["labels"]
    out = {"seed": seed, "centre": r1(xq @ gs.T, ql, gl), "oracle": baselines(data, truth)["oracle"],
           "dim": truth["world"]["dim"], "views": truth["world"]["views"], "locs": truth["world"]["train_locs"]}
    for rank in ranks:
        for k in ks:
            fitted = maps(centre, basis, views, centre, k, 0, "orth", rank)
            heads = fitted["lda"]
            out[f"gate r{min(rank, basis.axes.shape[0])} k{k}"] = r1(heads.embed(desc(q), "drone") @ gs.T, ql, gl)
            bank = heads.streams[0][1]
            B = bank.basis.numpy(); M = bank.maps.numpy()
            c = xq @ B
            best = None
            for m in M:
                e = l2n(xq + (c @ m - c) @ B.T) @ gs.T
                best = e if best is None else np.maximum(best, e)
            out[f"max r{min(rank, basis.axes.shape[0])} k{k}"] = r1(best, ql, gl)
    return out

if __name__ == "__main__":
    torch.set_num_threads(2)
    seeds = range(int(sys.argv[1]), int(sys.argv[2]))
    res = []
    for s in seeds:
        t = time.time(); o = run(s); res.append(o)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in o.items()}), f"{time.time()-t:.0f}s", flush=True)
    json.dump(res, open(sys.argv[3], "w"))
