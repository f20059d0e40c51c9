"""Stage `simulate`: write the cross-view simulator's train/test features into the store."""

from __future__ import annotations

from geoalign_store.simulator import simulate


def run(cfg) -> dict:
    return simulate(str(cfg.store), dataset=str(cfg.dataset), seed=int(cfg.seed), dim=int(cfg.dim),
                    train_locs=int(cfg.train_locs), test_locs=int(cfg.test_locs), views=int(cfg.views),
                    distractors=int(cfg.distractors), overwrite=bool(cfg.overwrite))
