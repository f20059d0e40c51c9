"""Stage `import-heads`: the paper's published weights -> safetensors heads in the store.

Release checkpoints are read with `torch.load(weights_only=True)` (no arbitrary unpickling),
every tensor's shape is checked against the stored features' C, and the result is written as
`heads/<name>/{agra,isms}.safetensors` + heads.json, usable by index/score like trained heads.
"""

from __future__ import annotations

from pathlib import Path

from geoalign_store import store as st
from geoalign_store.config import ConfigError, file_sha256, fingerprint, to_plain
from geoalign_store.method import (claim_heads_folder, load_release_agra, load_release_isms,
                                   read_release_checkpoint, save_module)


def _checkpoint(path, what: str) -> Path:
    if not path:
        raise ConfigError(f"import-heads needs {what}=PATH")
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise ConfigError(f"{what}={path} does not exist")
    return path


def run(cfg) -> dict:
    root = st.open_store(cfg.store, mode="r+")
    dataset = st.resolve_dataset(root, cfg.dataset)
    layers = st.stored_layers(root, dataset, list(cfg.layers))
    dim = int(root[f"{st.view_path(dataset, 'test', 'drone')}/layer_{layers[-1]}/desc"].shape[1])
    agra_path = _checkpoint(cfg.agra, "agra")
    try:
        agra = load_release_agra(read_release_checkpoint(agra_path), dim)
        isms = (load_release_isms(read_release_checkpoint(_checkpoint(cfg.isms, "isms")), dim)
                if cfg.isms else None)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    sources = {"agra": [str(agra_path), file_sha256(agra_path)]}
    if isms is not None:
        sources["isms"] = [str(cfg.isms), file_sha256(Path(str(cfg.isms)).expanduser())]
    spec = {"dataset": dataset, "layers": layers, "imported": sources}
    folder = st.artefact_dir(cfg.store, "heads", str(cfg.name))
    claim_heads_folder(folder, fingerprint(spec), bool(cfg.overwrite),
                       "other heads (trained, or imported from other files)")
    save_module(folder / "agra.safetensors", agra, {"dim": dim, "config": agra.config})
    if isms is not None:
        save_module(folder / "isms.safetensors", isms, {"in_dim": isms.in_dim, "latent_dim": isms.latent_dim})
    st.write_json(folder / "heads.json", {"fingerprint": fingerprint(spec), "spec": spec,
                                          "config": to_plain(cfg), "complete": True, "dim": dim,
                                          "has_isms": isms is not None})
    return {"stage": "import-heads", "store": str(cfg.store), "dataset": dataset, "name": str(cfg.name),
            "folder": str(folder), "dim": dim, "agra": str(agra_path), "isms": cfg.isms}

