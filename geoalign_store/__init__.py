"""geoalign: the library behind the `geoalign` CLI (store, datasets, backbone, heads, index, metrics)."""

__version__ = "0.1.0"
