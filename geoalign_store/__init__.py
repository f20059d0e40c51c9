"""geoalign: the library behind the `geoalign` CLI, in wings that each own one part of the
pipeline (docs/ARCHITECTURE.md), imported one way, bottom to top:

    config -> datasets -> store -> features, method -> retrieval -> report
                                            method -> sim

Stages (`pipelines/`) import the wings' faces (`from geoalign_store.store import open_store`).
"""

__version__ = "0.1.0"
