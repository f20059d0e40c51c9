"""Dataset layouts -> per-(split, view) listings of images, labels and query/gallery flags.

Every listing is sorted (never os.listdir order) and keyed by the image path relative to the
data root. Where a benchmark ships the same file twice (University-1652's query_drone and
gallery_drone, SUES-200's satellite copied under every altitude), the copies are merged into one
row flagged `in_query`/`in_gallery`, so each unique image is extracted once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder is missing or laid out differently from what the dataset expects."""


@dataclass
class ViewListing:
    split: str
    view: str
    ids: list[str]                      # image paths relative to the data root (the store key)
    labels: np.ndarray                  # int64 location ids, -1 = junk
    in_query: np.ndarray                # bool
    in_gallery: np.ndarray              # bool
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def _require_dir(path: Path, layout: str) -> None:
    if not path.is_dir():
        raise DatasetLayoutError(f"missing folder {path}; expected layout: {layout}")


def scan_locations(folder: Path) -> list[tuple[str, str]]:
    """(location folder name, file name) of every image in folder/<location>/, sorted."""
    items = []
    for loc in sorted(os.listdir(folder)):
        loc_dir = folder / loc
        if loc_dir.is_dir():
            items += [(loc, f) for f in sorted(os.listdir(loc_dir))
                      if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    return items


def _merge_copies(root: Path, query_dirs: list[Path], gallery_dirs: list[Path], label_of):
    """Rows of the union of query and gallery folders; a file present in both (same location,
    name and size) is one row. Returns ids, labels, in_query, in_gallery, source folder index."""
    rows: dict[tuple, dict] = {}
    for role, dirs in (("gallery", gallery_dirs), ("query", query_dirs)):
        for d in dirs:
            for loc, name in scan_locations(d):
                path = d / loc / name
                key = (loc, name, path.stat().st_size)
                row = rows.setdefault(key, {"id": str(path.relative_to(root)), "loc": loc,
                                            "query": False, "gallery": False})
                row[role] = True
    ordered = sorted(rows.values(), key=lambda r: r["id"])
    ids = [r["id"] for r in ordered]
    labels = np.array([label_of(r["loc"]) for r in ordered], dtype=np.int64)
    in_query = np.array([r["query"] for r in ordered], dtype=bool)
    in_gallery = np.array([r["gallery"] for r in ordered], dtype=bool)
    return ids, labels, in_query, in_gallery


def _numeric_label(loc: str) -> int:
    try:
        return int(loc)
    except ValueError as e:
        raise DatasetLayoutError(f"location folder {loc!r} is not a numeric id") from e


U1652_LAYOUT = ("<root>/train/{drone,satellite}/<location>/<image> and "
                "<root>/test/{query_drone,gallery_drone,query_satellite,gallery_satellite}/"
                "<location>/<image> (University-Release)")


def list_university1652(root: Path, splits: list[str]) -> list[ViewListing]:
    listings = []
    for split in splits:
        for view in ("drone", "satellite"):
            if split == "train":
                dirs_q = dirs_g = [root / "train" / view]
            elif split == "test":
                dirs_q, dirs_g = [root / "test" / f"query_{view}"], [root / "test" / f"gallery_{view}"]
            else:
                raise DatasetLayoutError(f"University-1652 has splits train and test, not {split!r}")
            for d in {*dirs_q, *dirs_g}:
                _require_dir(d, U1652_LAYOUT)
            ids, labels, q, g = _merge_copies(root, dirs_q, dirs_g, _numeric_label)
            listings.append(ViewListing(split, view, ids, labels, q, g))
    return listings


SUES_LAYOUT = ("<root>/Training/<altitude>/{drone,satellite}/<location>/<image> and "
               "<root>/Testing/<altitude>/{query_drone,gallery_drone,query_satellite,"
               "gallery_satellite}/<location>/<image> (the benchmark's split script output)")


def list_sues200(root: Path, splits: list[str], altitudes: list[int]) -> list[ViewListing]:
    listings = []
    for split in splits:
        top = {"train": "Training", "test": "Testing"}.get(split)
        if top is None:
            raise DatasetLayoutError(f"SUES-200 has splits train and test, not {split!r}")
        for view in ("drone", "satellite"):
            per_alt = []
            for h in altitudes:
                base = root / top / str(h)
                dq = [base / (view if split == "train" else f"query_{view}")]
                dg = [base / (view if split == "train" else f"gallery_{view}")]
                for d in {*dq, *dg}:
                    _require_dir(d, SUES_LAYOUT)
                per_alt.append((h, dq, dg))
            listings.append(_sues_view(root, split, view, per_alt))
    return listings


def _sues_view(root, split, view, per_alt) -> ViewListing:
    if view == "satellite":  # one image per location, copied under every altitude: merge them
        ids, labels, q, g = _merge_copies(root, [d for _, dq, _ in per_alt for d in dq],
                                          [d for _, _, dg in per_alt for d in dg], _numeric_label)
        return ViewListing(split, view, ids, labels, q, g)
    parts = [(h, *_merge_copies(root, dq, dg, _numeric_label)) for h, dq, dg in per_alt]
    ids = [i for p in parts for i in p[1]]
    altitude = np.concatenate([np.full(len(p[1]), p[0], dtype=np.int64) for p in parts])
    return ViewListing(split, view, ids, *(np.concatenate([p[k] for p in parts]) for k in (2, 3, 4)),
                       extra={"altitude": altitude})


FOLDER_LAYOUT = "<root>/[<split>/]<view>/<location>/<image> with views {views}"


def list_folder(root: Path, splits: list[str], views: list[str], explicit: bool = True) -> list[ViewListing]:
    """A user's own imagery. Labels are the location folder names (ints if all numeric, else the
    index in the sorted union of names); an image is a query when its location exists in another
    view, so a satellite without drone images is a gallery-only distractor. Splits asked for
    by name must exist; the default list takes those whose folders exist."""
    present = [s for s in splits if (root / s).is_dir()]
    has_splits = bool(present) or any((root / s).is_dir() for s in ("train", "test"))
    listings = []
    for split in ((splits if explicit else present) if has_splits else ["test"]):
        base = root / split if has_splits else root
        for view in views:
            _require_dir(base / view, FOLDER_LAYOUT.format(views=views))
        scans = {v: scan_locations(base / v) for v in views}
        names = sorted({loc for items in scans.values() for loc, _ in items})
        numeric = all(n.isdigit() for n in names)
        label_of = {n: (int(n) if numeric else i) for i, n in enumerate(names)}
        for view in views:
            others = {loc for v in views if v != view for loc, _ in scans[v]}
            items = scans[view]
            ids = [str((base / view / loc / f).relative_to(root)) for loc, f in items]
            labels = np.array([label_of[loc] for loc, _ in items], dtype=np.int64)
            in_query = np.array([loc in others for loc, _ in items], dtype=bool)
            listings.append(ViewListing(split, view, ids, labels, in_query,
                                        np.ones(len(items), dtype=bool)))
    return listings


def resolve_data_root(dcfg, data_root) -> Path:
    """The dataset folder; the demo is generated (once, cached) when no data_root is given."""
    if data_root is None and dcfg.get("name") == "demo":
        from ..config import fingerprint
        from .demo_scenes import default_demo_root, generate_demo
        params = dict(dcfg["generate"])
        return generate_demo(default_demo_root() / fingerprint(params)[:12], **params)
    if data_root is None:
        raise DatasetLayoutError(f"dataset {dcfg.get('name')!r} needs data_root=PATH")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(f"data_root {root} does not exist or is not a folder")
    return root


def list_dataset(dcfg, root: Path, splits: list[str] | None = None) -> list[ViewListing]:
    explicit = bool(splits)
    splits = list(splits or dcfg["splits"])
    kind = dcfg["kind"]
    if kind == "university1652":
        return list_university1652(root, splits)
    if kind == "sues200":
        return list_sues200(root, splits, list(dcfg["altitudes"]))
    if kind == "folder":
        return list_folder(root, splits, list(dcfg["views"]), explicit)
    raise DatasetLayoutError(f"unknown dataset kind {kind!r}: university1652, sues200 or folder")
