"""store: the Zarr v3 feature store and the files beside it. The one owner of the layout
(`features/<dataset>/<split>/<view>/...`), of block writes and their completion marks, of a map gallery's tile geometry (map_tiles), of the
`artefacts/` folder beside the arrays (head weights, indices, scores), of checksummed reads that
name damaged blocks (integrity), of bounded row reads (rows), and of tensor files written
atomically and read safely (safetensors; torch files only with weights_only=True).
StoreError: the store cannot serve a request as it stands (exit 2).

May import: config, datasets (a view is written from a dataset's listing).
"""

from ..faces import face

IMPORTS = ("config", "datasets")
__getattr__, __dir__, __all__ = face(__name__, {
    "errors": ("StoreError",),
    "layout": ("FEATURES", "FEATURE_CODECS", "META_CODECS", "ViewLayout", "block_rows",
               "content_digest", "damaged_metadata", "features_fingerprint", "finalize_view",
               "layer_array", "list_datasets", "list_views", "metadata_error", "n_blocks",
               "open_store", "pending_blocks", "prepare_dataset", "prepare_view",
               "read_coordinates", "read_layer", "read_meta", "read_view", "read_view_layers",
               "reopen_damaged_blocks", "resolve_dataset", "store_location", "stored_layers",
               "view_path", "write_block", "write_coordinates", "write_topk"),
    "map_tiles": ("TILE_ARRAYS", "is_map_view", "read_map_files", "read_tile_table", "write_tile_table"),
    "artefacts": ("ARTEFACTS", "artefact_dir", "write_json"),
    "integrity": ("CheckedArray", "damaged_blocks", "metadata_errors", "repair_hint", "view_digest"),
    "rows": ("DEFAULT_READ_BYTES", "DEFAULT_SLAB_BYTES", "prefetched_slabs", "read_rows", "row_chunk",
             "rows_per_request", "slab_rows"),
    "tensor_files": ("CheckpointError", "check_safetensors", "load_tensors", "safe_torch_load",
                     "save_tensors"),
})
