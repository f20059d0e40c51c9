"""retrieval: heads' embeddings -> answers. The direction sets a score reads (D2S, S2D, per
altitude), stored descriptors embedded in bounded chunks, raw or through the store's heads (the
embedder; or another store's, `heads=STORE:NAME`, when both stores' features were made alike),
the official University-1652 metrics computed in blocks and streamed, distances in metres, a map
gallery's geometric truth (a tile is right when its footprint holds the photo's position; Dis@1,
within-N-metres, SDM@K) and positions finer than a tile, FAISS indices and the store's cached
ones (IVF-PQ at any size: parameters chosen from the gallery, built shard by shard as dask tasks,
merged into memory-mapped lists, re-ranked), and `Locator` (where was this photo taken?).
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
    "embeddings": ("DirectionSet", "MODES", "PROTOCOLS", "Side", "StoredEmbeddings", "StoredSide", "direction_sets",
                   "raw_embedding", "streamed_good_counts"),
    "embedder": ("FEATURE_FIELDS", "IN_MEMORY_BYTES", "Embedder", "features_differ", "foreign_heads", "embedder_inputs", "gallery_fingerprint",
                 "inputs_staleness", "open_direction", "resolve_embedder", "side_embeddings"),
    "index": ("INDEX_TYPES", "IndexConfigError", "build_index", "gpu_available", "gpu_for",
              "load_index", "resolve_params",
              "save_index", "search"),
    "indices": ("ensure_index", "index_name", "load_built"),
    "map_scoring": ("MAP_THRESHOLDS_M", "SDM_KS", "footprint_goods", "map_distance_metrics",
                    "photo_positions", "sdm_at_k"),
    "map_locate": ("REFINE_K", "agreeing", "map_around", "refine_position"),
    "ivf_rule": ("IVFPQ_KEYS", "build_params", "choose_ivfpq", "factory_string"),
    "coarse_kmeans": ("split_counts", "two_level_centroids"),
    "sharded": ("ShardedIndex", "load_merged", "plan_shards", "rerank_exact"),
    "sharded_build": ("SHARD_ROWS", "ensure_sharded", "rebuild_command", "shard_task"),
    "shard_integrity": ("sharded_damage", "sharded_recorded"),
    "locator": ("LocateError", "Locator", "add_truth"),
})
