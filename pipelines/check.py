"""Stage `check`: read every block of every array the store holds and name what is damaged.

Feature blocks marked done are read back whole (their crc32c checksums verified; a missing chunk
file counts as damaged, since zarr would read it as zeros); the other arrays of each view (ids,
labels, flags, errors) are read too. Exit code 1 when anything is damaged; the report names each
view and block and the command that repairs it. Nothing is written.
"""

from __future__ import annotations

import time

from geoalign_store import store as st
from geoalign_store.store_integrity import damaged_blocks, metadata_errors, repair_hint


def check_view(root, path: str) -> dict:
    group = root[path]
    n, block_size = group.attrs.get("n"), group.attrs.get("block_size")
    done = group["block_done"][:] if "block_done" in group else None
    damaged = damaged_blocks(group, full=True)
    info = {"n": n, "blocks": None if done is None else int(len(done)),
            "blocks_done": None if done is None else int(done.sum()),
            "complete": bool(group.attrs.get("complete", done is None or done.all())),
            "damaged": [{"block": b, "rows": _rows(b, block_size, n), "reason": why}
                        for b, why in damaged.items()],
            "metadata_damaged": metadata_errors(group)}
    if info["damaged"] or info["metadata_damaged"]:
        info["repair"] = (repair_hint(group, st.store_location(root)) if not info["metadata_damaged"]
                          else "the view's ids/labels are damaged: re-extract it with overwrite=true")
    return info


def _rows(block: int, block_size, n) -> list[int] | None:
    if not block_size:
        return None
    return [block * block_size, min((block + 1) * block_size, n) - 1]


def run(cfg) -> dict:
    t0 = time.perf_counter()
    root = st.open_store(cfg.store, mode="r")
    datasets = [st.resolve_dataset(root, cfg.dataset)] if cfg.dataset else st.list_datasets(root)
    views = {path: check_view(root, path) for path in st.list_views(root)
             if path.split("/")[1] in datasets}
    n_damaged = sum(len(v["damaged"]) + len(v["metadata_damaged"]) for v in views.values())
    return {"stage": "check", "store": str(cfg.store), "views": views, "n_damaged": n_damaged,
            "ok": n_damaged == 0, "wall_s": round(time.perf_counter() - t0, 3)}
