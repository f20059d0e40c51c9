"""store: the Zarr v3 feature store and the files beside it. The one owner of the layout
(`features/<dataset>/<split>/<view>/...`), of block writes and their completion marks, of a map gallery's tile geometry (map_tiles), of the
`artefacts/` folder beside the arrays (head weights, indices, scores), of checksummed reads that
name damaged blocks (integrity), of bounded row reads (rows), of the rows a direction selects
read a step at a time, never held a view long (selections), of tensor files written
atomically and read safely (safetensors; torch files only with weights_only=True), and of the
guarded readers of every other file kind (documents: JSON, JSON lines, .npy, FAISS; metadata:
the zarr.json documents), each naming a damaged file and what rebuilds it.
StoreError: the store cannot serve a request as it stands (exit 2).

May import: config, datasets (a view is written from a dataset's listing).
"""

from ..faces import face

IMPORTS = ("config", "datasets")
__getattr__, __dir__, __all__ = face(__name__, {
    "errors": ("StoreError",),
    "layout": ("FEATURES", "FEATURE_CODECS", "META_CODECS", "ViewLayout", "block_rows",
               "content_digest", "features_fingerprint", "finalize_view",
               "layer_array", "list_datasets", "list_views", "n_blocks",
               "open_store", "pending_blocks", "prepare_dataset", "prepare_view",
               "read_coordinates", "read_layer", "read_meta", "read_view", "read_view_layers",
               "reopen_damaged_blocks", "resolve_dataset", "rewrite_view_hint", "split_damage",
               "store_location", "stored_layers",
               "view_path", "write_block", "write_coordinates", "write_topk"),
    "metadata": ("check_metadata", "damaged_metadata", "metadata_error"),
    "documents": ("DamagedArtefact", "damaged_artefacts", "read_faiss_index", "read_json", "read_json_lines", "read_npy"),
    "map_tiles": ("TILE_ARRAYS", "is_map_view", "read_map_files", "read_tile_table", "write_tile_table"),
    "artefacts": ("ARTEFACTS", "artefact_dir", "write_json", "write_npy", "write_npy_chunks"),
    "integrity": ("CheckedArray", "damaged_blocks", "metadata_errors", "repair_hint", "view_digest"),
    "selections": ("RowSelection", "extra_values", "view_selection"),
    "rows": ("DEFAULT_READ_BYTES", "DEFAULT_SLAB_BYTES", "prefetched_slabs", "read_rows", "row_chunk",
             "rows_per_request", "slab_rows"),
    "tensor_files": ("CheckpointError", "check_safetensors", "load_tensors", "safe_torch_load",
                     "save_tensors"),
})
