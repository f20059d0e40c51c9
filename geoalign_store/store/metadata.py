"""The guarded reader of the store's Zarr metadata: every `zarr.json` of a local store parsed
before zarr opens it. zarr fails on a damaged one with a bare JSONDecodeError (or, when one was
deleted, silently sees no node); here each is named, with what rewrites it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import StoreError

DOCUMENT = "zarr.json"
LEGACY = ("heads", "indices")  # artefact folders of stores written before artefacts/ (moved on use)


def _local_base(url) -> Path | None:
    text = str(url)
    if "://" in text and not text.startswith("file://"):
        return None
    base = Path(text.removeprefix("file://"))
    return base if base.is_dir() else None


def damaged_metadata(url) -> list[str]:
    """The store's zarr.json documents that cannot be parsed as a node, or that are missing from
    a folder that holds chunks or nodes, as paths relative to the store (local stores only).
    Arrays are not descended into (their folders hold chunks, and `artefacts/` plain files)."""
    base = _local_base(url)
    if base is None or not (base / DOCUMENT).exists() and not any(base.iterdir()):
        return []
    bad: list[str] = []
    _walk(base, base, bad)
    return bad


def _walk(base: Path, folder: Path, bad: list[str]) -> None:
    doc = folder / DOCUMENT
    if not doc.exists():  # inside a group every folder is a node (pre-artefacts/ ones aside)
        legacy = folder.parent == base and folder.name in LEGACY
        if _holds_zarr(folder) if folder == base else not legacy:
            bad.append(str(doc.relative_to(base)))
        return
    node = _node_type(doc)
    if node is None:
        bad.append(str(doc.relative_to(base)))
    if node != "group":  # an array (chunks under it) or unknown: nothing to descend into
        return
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                _walk(base, Path(entry.path), bad)


def _node_type(doc: Path) -> str | None:
    try:
        meta = json.loads(doc.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("zarr_format") != 3:
        return None
    return meta.get("node_type") if meta.get("node_type") in ("group", "array") else None


def _holds_zarr(folder: Path) -> bool:
    """A store's folder without zarr.json that zarr would have written one for: it holds chunks
    (`c/`) or nodes of its own."""
    if (folder / "c").is_dir():
        return True
    with os.scandir(folder) as entries:
        return any(e.is_dir() and (Path(e.path) / DOCUMENT).exists() for e in entries)


def metadata_error(url) -> StoreError | None:
    """A StoreError naming the damaged documents and how each area is rewritten, or None."""
    bad = damaged_metadata(url)
    if not bad:
        return None
    fixes = sorted({_fix(url, doc) for doc in bad})
    return StoreError(f"{url}: {len(bad)} Zarr metadata document(s) are damaged or missing: "
                      f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. "
                      f"The arrays under them cannot be read. {' '.join(fixes)}")


def _fix(url, doc: str) -> str:
    top = doc.split("/", 1)[0]
    if top == "scores":
        return (f"Score outputs: delete {Path(str(url)) / 'scores'} and rerun `geoalign score` "
                "(metrics.json and report.md are kept under artefacts/).")
    if top == "artefacts":
        return f"Delete {Path(str(url)) / doc}: the next stage writes it again."
    parts = doc.split("/")
    if top == "features" and len(parts) > 4:  # inside a view: that view is extracted again
        view = Path(str(url)).joinpath(*parts[:4])
        return (f"Delete {view} and rerun `geoalign extract` with the arguments that wrote it "
                "(it extracts that view again).")
    return (f"The features' own documents: extract again into a new store "
            f"(`geoalign extract store=NEW.zarr ...`), or delete {url} first.")


def check_metadata(url) -> None:
    """Raise the StoreError of metadata_error, if any (before zarr opens the store)."""
    error = metadata_error(url)
    if error is not None:
        raise error
