"""features: images -> descriptors. Image reading and normalisation, map tiles read as
rasterio windows resampled on the fly (no tile file written), decoding ahead of the
forward pass, the DINOv3 ViT forward and its weights (a Hugging Face folder, or the official
`.pth` converted key by key), the paper's pooling (per-position L2, GeM p=3, L2; CLS), the
extraction engine that writes whole blocks to the store in-process or as dask tasks (one GPU per
worker), the dask client those tasks (and the index's shards) run on (`cluster=`), where
computation runs (`device=`), and torch's large CPU tensors on huge pages (`use_huge_pages`,
set by the CLI and the benchmarks before torch loads).

May import: config, datasets, store.
"""

from ..faces import face

IMPORTS = ("config", "datasets", "store")
__getattr__, __dir__, __all__ = face(__name__, {
    "images": ("DECODE_FAILURES", "IMAGENET_MEAN", "IMAGENET_STD", "ImageFiles", "collate_by_shape", "image_hw",
               "load_image", "normalise", "read_rgb"),
    "decoding": ("auto_workers", "decoded_batches"),
    "vit": ("DinoV3ViT", "load_vit", "read_folder_weights"),
    "dinov3_convert": ("OFFICIAL_ARCHS", "config_from_official_state_dict", "convert_official_state_dict",
                       "load_official_checkpoint", "read_official"),
    "backbone": ("ARCH_KEYS", "AUTO", "GEM_EPS", "GEM_P", "Backbone", "cache_dir", "gem_descriptor",
                 "layer_tokens", "load_backbone", "pool_tokens", "read_arch", "resolve_backbone",
                 "resolve_layers", "weights_fingerprint", "weights_source"),
    "extraction": ("BlockJob", "BlockWriter", "Clock", "EncodeOptions", "block_task", "encode_stack",
                   "job_batches", "pixel_source", "plan_jobs", "plan_tile_jobs", "run_in_process"),
    "map_inputs": ("MAP_TILE_PX", "MapInputs"),
    "map_tiles": ("SKIPPED", "MapSource", "MapTiles", "open_grid", "read_window", "tile_pixels"),
    "devices": ("device_name", "local_worker_devices", "resolve_device"),
    "worker_devices": ("DevicePerWorker", "worker_device"),
    "cluster": ("dask_client", "environment_kept", "local_workers"),
    "host_memory": ("use_huge_pages",),
})
