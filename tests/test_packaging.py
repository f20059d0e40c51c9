"""The installed package carries its configs: a wheel or `pip install .` works like the checkout.

(CI also builds a wheel, installs it into a fresh virtualenv and runs the demo from a folder
outside the checkout; these tests catch the cause of such a failure without building anything.)
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

import geoalign_store
from geoalign_store.config import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]


def _package_data() -> dict[str, list[str]]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-data"]


def test_configs_are_found_inside_the_package_not_the_checkout():
    package = Path(geoalign_store.__file__).resolve().parent
    assert CONFIG_DIR.resolve().is_relative_to(package)
    assert (CONFIG_DIR / "common.yaml").is_file() and list((CONFIG_DIR / "stage").glob("*.yaml"))


def test_every_config_file_is_declared_package_data():
    """A YAML file the package-data globs miss would be absent from the wheel."""
    owner = CONFIG_DIR.parent  # the package the globs are relative to
    patterns = _package_data()[".".join(owner.relative_to(ROOT).parts)]
    files = [p.relative_to(owner).as_posix() for p in CONFIG_DIR.rglob("*") if p.is_file()]
    assert files
    missed = [f for f in files if not any(fnmatch.fnmatch(f, pat) and f.count("/") == pat.count("/")
                                          for pat in patterns)]
    assert not missed, f"not in [tool.setuptools.package-data]: {missed}"


def test_the_top_level_configs_folder_is_the_packaged_one():
    top = ROOT / "configs"
    assert top.resolve() == CONFIG_DIR.resolve()
