"""report: what a person reads. The terminal (progress bars and tables on stderr, so `--json`
keeps stdout clean), score's report.md and pooled metric rows, and the pictures: a score's
retrieval grid, a located photo's answer sheet, and a map answer's picture (the map around the
answer, its top tiles, position, uncertainty and truth).

May import: config, store, retrieval (distances described in words).
"""

from ..faces import face

IMPORTS = ("config", "store", "retrieval")
__getattr__, __dir__, __all__ = face(__name__, {
    "terminal": ("console", "crash_log", "progress_bar"),
    "scores": ("METRIC_KEYS", "pooled_metrics", "table_rows", "write_report"),
    "pictures": ("draw_answer", "draw_retrievals"),
    "map_pictures": ("draw_map_answer",),
})
