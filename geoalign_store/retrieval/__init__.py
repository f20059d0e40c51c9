"""retrieval: heads' embeddings -> answers. The direction sets a score reads (D2S, S2D, per
altitude), stored descriptors embedded in bounded chunks, raw or through the store's heads (the
embedder), the official University-1652 metrics computed in blocks and streamed, distances in
metres, FAISS indices and the store's cached ones, and `Locator` (where was this photo taken?).
Metrics are pure functions of arrays.

May import: config, datasets, store, features (locate encodes new photos), method (the heads).
"""

from ..faces import face

IMPORTS = ("config", "datasets", "store", "features", "method")
__getattr__, __dir__, __all__ = face(__name__, {
    "block_ops": ("NumpyOps", "TorchOps", "ops_for"),
    "metrics": ("RetrievalResult", "good_counts", "metrics_from_ranks", "recall_1pct_index",
                "retrieval_metrics", "score_retrieval", "topk_gallery"),
    "query_streaming": ("score_streamed_queries",),
    "distances": ("describe_distances", "distance_metrics", "haversine_m", "pool_distance_metrics",
                  "top1_distance_metrics"),
    "embeddings": ("DirectionSet", "MODES", "PROTOCOLS", "Side", "StoredEmbeddings", "direction_sets",
                   "raw_embedding"),
    "embedder": ("IN_MEMORY_BYTES", "Embedder", "embedder_inputs", "gallery_fingerprint",
                 "inputs_staleness", "open_direction", "resolve_embedder", "side_embeddings"),
    "index": ("INDEX_TYPES", "IndexConfigError", "build_index", "gpu_available", "gpu_for",
              "load_index", "resolve_params",
              "save_index", "search"),
    "indices": ("ensure_index", "index_name"),
    "locator": ("LocateError", "Locator", "add_truth"),
})
