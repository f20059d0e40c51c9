"""Stage `score`: Recall@K and AP of one direction, exactly as University-1652's official
evaluation (SPEC §5), written to `scores/<name>/<mode>/` with the top-k ranks and pictures.

`index=flat` (default) is exact and streamed, so memory is bounded by a chunk, not queries x
gallery: a gallery smaller than the queries (University-1652 D2S) is held and the queries read in
prefetched slabs (query_streaming); otherwise the queries are held and the gallery read chunk by
chunk. `device=` puts the similarity blocks and rank counting on a GPU.
`index=ivfpq|hnsw` ranks with the approximate FAISS index (built if missing): goods it does not
return count as ranked past the gallery's end, and the metrics are marked approximate. They are
written beside the exact ones (`scores/<name>-<index>/`), and when an exact score of the same
inputs is there its figures are reported next to them (`exact`). ivfpq re-ranks its top
`rerank` candidates by the exact inner product of the full embeddings.
"""

from __future__ import annotations

import time

import numpy as np

from geoalign_store import store as st
from geoalign_store.config import to_plain
from geoalign_store.features import device_name
from geoalign_store.report import console, draw_retrievals, pooled_metrics, write_report
from geoalign_store.retrieval import (IN_MEMORY_BYTES, embedder_inputs, metrics_from_ranks,
                                      footprint_goods, map_distance_metrics, open_direction,
                                      pool_distance_metrics, recall_1pct_index,
                                      score_retrieval, score_streamed_queries, side_embeddings,
                                      streamed_good_counts,
                                      top1_distance_metrics)

SCHEMA_VERSION = 1


def ann_metrics(index, queries: np.ndarray, q_labels, gallery, k: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics from an approximate index's top-k lists (junk dropped, unfound goods ranked last).
    `gallery`: the direction's gallery side; only the labels of the rows the index returned are
    read, and each query's number of goods is counted a chunk of the gallery at a time."""
    from geoalign_store.retrieval import search  # faiss: loaded only for approximate indices
    n_gal = len(gallery)
    scores, ids = search(index, queries, min(n_gal, max(k, recall_1pct_index(n_gal) + 1, 10)))
    found = ids >= 0
    labels = np.full(ids.shape, -1, np.int64)
    labels[found] = gallery.labels_at(ids[found])
    kept = found & (labels != -1)
    position = np.cumsum(kept, axis=1) - 1                     # rank among non-junk results
    good = kept & (labels == q_labels[:, None])
    n_good = streamed_good_counts(q_labels, gallery)
    slots = max(int(n_good.max(initial=0)), 1)
    ranks = np.sort(np.where(good, position, np.iinfo(np.int64).max), axis=1)[:, :slots]
    ranks = np.pad(ranks, ((0, 0), (0, slots - ranks.shape[1])), constant_values=np.iinfo(np.int64).max)
    unfound = ranks == np.iinfo(np.int64).max
    ranks = np.where(unfound, n_gal + np.arange(slots), ranks)
    metrics = metrics_from_ranks(ranks, n_good, n_gal)
    order = np.argsort(~kept, axis=1, kind="stable")[:, :k]    # non-junk results first, in order
    return metrics, np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)


def score_set(cfg, root, dataset, embedder, ds, device="cpu") -> tuple[dict, np.ndarray, np.ndarray]:
    queries = side_embeddings(root, dataset, embedder, ds.query)
    gallery = side_embeddings(root, dataset, embedder, ds.gallery)
    k = int(cfg.topk)
    goods = map_goods(root, dataset, ds, cfg)
    if cfg.index != "flat":
        from geoalign_store.retrieval import ensure_index
        index, _ = ensure_index(cfg, root, dataset, embedder, ds, device)
        metrics, top_i, top_s = ann_metrics(index, queries.materialise(), ds.query.labels, ds.gallery, k)
        return {**metrics, "approximate": True}, top_i, top_s
    g_bytes = gallery.shape[0] * gallery.shape[1] * 4
    if g_bytes <= min(IN_MEMORY_BYTES, queries.shape[0] * queries.shape[1] * 4):
        # the smaller side is held, the larger one streamed (U1652 D2S: 951 x 37,855 queries)
        res = score_streamed_queries(queries, gallery.materialise(), ds.query.labels,
                                     ds.gallery.labels, topk=k, device=device, goods=goods)
    else:
        gallery = gallery.materialise() if g_bytes <= IN_MEMORY_BYTES else gallery
        res = score_retrieval(queries.materialise(), gallery, ds.query.labels, ds.gallery.labels,
                              topk=k, device=device, goods=goods)
    return {**res.metrics, "approximate": False}, res.topk_indices, res.topk_scores


def retrieved_names(gallery, top_i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(names of the gallery items in top_i, top_i as positions in those names; -1 kept): the
    names of the rows retrieved, not of the whole gallery."""
    shown = np.unique(top_i[top_i >= 0])
    at = np.where(top_i >= 0, np.searchsorted(shown, np.maximum(top_i, 0)), -1)
    return gallery.ids_at(shown), at


def map_goods(root, dataset, ds, cfg):
    """A map gallery's right tiles per photo (its footprint holds the photo); None otherwise."""
    if not st.is_map_view(root, dataset):
        return None
    if ds.mode != "D2S" or cfg.index != "flat":
        raise st.StoreError(f"{dataset} is a map gallery: score it with mode=D2S index=flat (photos "
                            "against tiles, exact ranks)")
    return footprint_goods(root, dataset, ds)


def goods_rule(root, dataset) -> str:
    return "footprint" if st.is_map_view(root, dataset) else "labels"


def distance_figures(root, dataset, ds, top_i) -> dict:
    """Metres beside the ranks: a map's Dis@1, within 5..100 m and SDM@K; else Dis@1 and within
    25/50/100 m when the store has coordinates."""
    if st.is_map_view(root, dataset):
        return map_distance_metrics(root, dataset, ds, top_i)
    return top1_distance_metrics(root, dataset, ds, top_i) or {}


def _beside_exact(result: dict, path) -> None:
    """result["exact"]: the Recall@K and AP of the exact score of the same inputs, if there is one."""
    import json
    try:
        exact = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if exact.get("approximate") is False and exact.get("inputs") == result["inputs"] and \
            exact.get("gallery_protocol") == result["gallery_protocol"]:
        result["exact"] = {"recall": exact["recall"], "ap": exact["ap"], "metrics": str(path)}
        console.print(f"{result['index']}: R@1 {100 * result['recall']['1']:.2f}, R@10 "
                      f"{100 * result['recall']['10']:.2f} (exact: {100 * exact['recall']['1']:.2f}, "
                      f"{100 * exact['recall']['10']:.2f})", highlight=False)


def run(cfg) -> dict:
    t0 = time.perf_counter()
    mode = str(cfg.mode).upper()
    cfg.mode = mode
    device = device_name(cfg.get("device", "auto"))
    root, dataset, embedder, sets = open_direction(cfg, mode)
    if embedder.spec.get("recipe", {}).get("streams") == ["centre"]:
        console.print(f"heads {embedder.name}: centring only (fit-heads estimated no candidate "
                      "better than domain centring)")
    name = f"{dataset}-{embedder.name}" + ("" if cfg.fusion or embedder.name == "none" else "-stream1") \
        + ("" if cfg.gallery_protocol == "official" else f"-{cfg.gallery_protocol}")
    exact = None if cfg.index == "flat" else st.artefact_dir(cfg.store, "scores", name, mode) / "metrics.json"
    name += "" if cfg.index == "flat" else f"-{cfg.index}"   # approximate figures beside the exact ones
    folder = st.artefact_dir(cfg.store, "scores", name, mode)
    subsets, pictures = {}, []
    for ds in sets:
        metrics, top_i, top_s = score_set(cfg, root, dataset, embedder, ds, device)
        # extra keys beside the schema, only when the store has coordinates: Dis@1, within 25/50/100 m
        subsets[ds.subset] = {**metrics, **distance_figures(root, dataset, ds, top_i)}
        st.write_topk(root, f"scores/{name}/{mode}/{ds.subset.replace('=', '')}",
                      ds.query.ids, *retrieved_names(ds.gallery, top_i), top_s)
        if cfg.pictures and goods_rule(root, dataset) == "labels":  # a map: locate draws the map
            pictures.append(draw_retrievals(cfg, root, dataset, ds, top_i, folder, top_s=top_s))
    head = {"schema_version": SCHEMA_VERSION, "dataset": dataset, "mode": mode,
            "heads": embedder.name, "fusion": bool(embedder.spec.get("fusion")),
            "layers": embedder.layers, "gallery_protocol": cfg.gallery_protocol, "index": cfg.index}
    result = {**head, **pooled_metrics(subsets)}
    if len(subsets) > 1:
        result.update(pool_distance_metrics(subsets) or {})
    if head["fusion"]:  # an extra key beside the schema: the weight `auto` resolved to
        result["fusion_weight"] = embedder.spec["fusion_weight"]
    if embedder.name != "none":  # extra: what the heads are (fit-heads' choice, e.g. centring)
        result["heads_recipe"] = embedder.description
    if len(subsets) > 1:
        result["subsets"] = subsets
    result["inputs"] = embedder_inputs(embedder)  # extra: what `geoalign check` compares to the store
    if cfg.index == "ivfpq":
        result["rerank"] = int(cfg.rerank)
    if exact is not None:
        _beside_exact(result, exact)
    st.write_json(folder / "metrics.json", result)
    write_report(folder / "report.md", result, subsets, to_plain(cfg), [p for p in pictures if p])
    outputs = {"metrics": str(folder / "metrics.json"), "report": str(folder / "report.md"),
               "pictures": [str(p) for p in pictures if p],
               "wall_s": round(time.perf_counter() - t0, 3)}
    # `--json` prints exactly metrics.json; where the files went is shown beside the table
    return {**result, "_outputs": outputs}
