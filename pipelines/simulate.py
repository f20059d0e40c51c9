"""Stage `simulate`: write a cross-view simulator family's train/test features into the store."""

from __future__ import annotations

from geoalign_store.sim import SIZES, simulate


def run(cfg) -> dict:
    sizes = {name: (None if cfg[name] is None else int(cfg[name])) for name in SIZES}
    return simulate(str(cfg.store), dataset=str(cfg.dataset), family=str(cfg.family),
                    seed=int(cfg.seed), overwrite=bool(cfg.overwrite), **sizes)
