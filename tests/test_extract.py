"""Extraction: the paper's descriptors, resumability, scale-out, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import torch
import zarr
from omegaconf import OmegaConf
from typer.testing import CliRunner

from conftest import extract_overrides, make_folder_dataset
from geoalign_store.config import ConfigError, compose
from geoalign_store.features import load_backbone, load_image, local_worker_devices, weights_source
from geoalign_store.store import StoreError
from pipelines import extract
from pipelines.cli import app

VIEWS = ("train/drone", "train/satellite", "test/drone", "test/satellite")


def run_extract(store: Path, data_root: Path, *extra: str) -> dict:
    return extract.run(compose("extract", extract_overrides(store, data_root, *extra)))


def view_arrays(store: Path, dataset: str = "folder") -> dict[str, np.ndarray]:
    group = zarr.open_group(str(store), mode="r")
    out = {}
    for view in VIEWS:
        for name in ("layer_26/desc", "layer_26/cls", "layer_28/desc", "layer_28/cls", "errors"):
            out[f"{view}/{name}"] = group[f"features/{dataset}/{view}/{name}"][:]
    return out


def assert_same_arrays(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def extracted(folder_dataset, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("stores") / "ref.zarr"
    run_extract(store, folder_dataset)
    return store


def reference_descriptor(model, pixels: torch.Tensor, layer: int, n_reg: int):
    """Slow float64 per-image reference: a manual pass through the blocks of transformers'
    DINOv3ViTModel (independent of geoalign_store.features.vit), then the paper's pooling written out
    position by position."""
    model = model.double()
    x = pixels[None].double()
    hidden = model.embeddings(x)
    rope = model.rope_embeddings(x)
    for block in model.model.layer[: layer + 1]:
        hidden = block(hidden, position_embeddings=rope)
    tokens = model.norm(hidden)[0].detach().numpy()
    cls, patches = tokens[0], tokens[1 + n_reg:]
    acc = np.zeros(patches.shape[1])
    for position in patches:
        acc += np.maximum(position / np.linalg.norm(position), 1e-6) ** 3
    gem = (acc / len(patches)) ** (1 / 3)
    return gem / np.linalg.norm(gem), cls


def test_descriptors_equal_float64_reference(extracted, folder_dataset):
    from transformers import DINOv3ViTModel
    cfg = compose("extract", ["dataset=folder"])
    bb = load_backbone(OmegaConf.to_container(cfg.backbone), None, [26, 28])
    reference = DINOv3ViTModel.from_pretrained(weights_source(OmegaConf.to_container(cfg.backbone), None),
                                               local_files_only=True).eval()
    group = zarr.open_group(str(extracted), mode="r")["features/folder/test/drone"]
    ids = [str(i) for i in group["ids"][:]]
    for row in (0, len(ids) - 1):
        pixels = load_image(folder_dataset / ids[row])
        for layer in (26, 28):
            desc, cls = reference_descriptor(reference, pixels, layer, bb.n_registers)
            np.testing.assert_allclose(group[f"layer_{layer}/desc"][row], desc, atol=2e-6)
            np.testing.assert_allclose(group[f"layer_{layer}/cls"][row], cls, rtol=1e-5, atol=1e-5)


def test_uint8_pixels_normalised_on_the_device_equal_the_float_recipe_bitwise(folder_dataset):
    """Decode workers hand on uint8 (read_rgb); normalise() must give exactly what ToTensor +
    Normalize in float32 on the host gives (numpy here, independent of the code under test)."""
    from PIL import Image
    from geoalign_store.features import IMAGENET_MEAN, IMAGENET_STD, normalise, read_rgb
    path = next((folder_dataset / "test/drone").rglob("*.png"))
    pixels = read_rgb(path)
    assert pixels.dtype == torch.uint8 and pixels.shape[0] == 3
    with Image.open(path) as img:
        hwc = np.asarray(img.convert("RGB"), dtype=np.float32) / np.float32(255.0)
    mean, std = (np.asarray(v, np.float32).reshape(3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    want = (hwc.transpose(2, 0, 1) - mean) / std
    got = normalise(torch.stack([pixels, pixels]))
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got[1].numpy(), want)
    with pytest.raises(TypeError, match="uint8"):
        normalise(got)


def test_layer_mapping_against_manual_pass(folder_dataset):
    """Block k's output is hidden_states[k + 1]; negative indices count from the end."""
    cfg = compose("extract", ["dataset=folder"])
    bb = load_backbone(OmegaConf.to_container(cfg.backbone), None, [-6, -4])
    assert bb.layers == [26, 28] and len(bb.model.layer) == 29
    from geoalign_store.features import layer_tokens
    pixels = load_image(next((folder_dataset / "test/drone").rglob("*.png")))[None]
    got = layer_tokens(bb, pixels)
    x, hidden = pixels.double(), None
    model = bb.model.double()
    hidden, rope = model.embeddings(x), model.rope_embeddings(x)
    for k, block in enumerate(model.layer):
        hidden = block(hidden, position_embeddings=rope)
        if k in got:
            np.testing.assert_allclose(got[k].numpy(), model.norm(hidden).detach().numpy(), atol=1e-4)


def test_store_read_with_plain_zarr_and_dask(extracted):
    group = zarr.open_group(str(extracted), mode="r")
    view = group["features/folder/test/satellite"]
    ids = view["ids"][:]
    assert [str(i) for i in ids] == sorted(str(i) for i in ids)
    assert len(ids) == 5 and view["labels"][:].tolist() == [100, 101, 102, 103, 104]
    # the distractor satellite (no drone images) is gallery-only
    assert view["in_query"][:].tolist() == [True, True, True, True, False]
    desc = da.from_zarr(str(extracted), component="features/folder/test/drone/layer_28/desc")
    norms = da.linalg.norm(desc, axis=1).compute()
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    assert group["features/folder"].attrs["fingerprint"]["spec"]["layers"] == [26, 28]
    assert view.attrs["complete"] is True


def test_rerun_is_a_no_op(extracted, folder_dataset):
    before = view_arrays(extracted)
    result = run_extract(extracted, folder_dataset)
    assert result["images_extracted"] == 0
    assert_same_arrays(before, view_arrays(extracted))


def test_resume_after_sigkill_is_identical(tmp_path, extracted):
    data = make_folder_dataset(tmp_path / "data", n_locations=12, drones=5, seed=0)
    full, killed = tmp_path / "full.zarr", tmp_path / "killed.zarr"
    args = [sys.executable, "-m", "pipelines.cli", "extract",
            *extract_overrides(killed, data, "block_size=2", "batch_size=2")]
    proc = subprocess.Popen(args, cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=os.environ.copy())
    markers = killed / "features/folder/train/drone/block_done/c"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if markers.is_dir() and len(os.listdir(markers)) >= 3:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = run_extract(killed, data, "block_size=2", "batch_size=2")
    assert 0 < resumed["images_extracted"] < 12 * 5 * 2 + 12 * 2 + 1
    run_extract(full, data, "block_size=2", "batch_size=2")
    assert_same_arrays(view_arrays(full), view_arrays(killed))


def test_local_cluster_equals_in_process(tmp_path, extracted, folder_dataset):
    store = tmp_path / "cluster.zarr"
    result = run_extract(store, folder_dataset, "cluster=local:2")
    assert result["images_extracted"] == 33
    assert_same_arrays(view_arrays(extracted), view_arrays(store))


@pytest.mark.parametrize("decode", ["threads", "processes"])
def test_decode_workers_equal_in_process(tmp_path, extracted, folder_dataset, decode):
    store = tmp_path / "workers.zarr"
    run_extract(store, folder_dataset, "num_workers=2", f"decode={decode}")
    assert_same_arrays(view_arrays(extracted), view_arrays(store))


def test_threaded_batches_keep_order_record_errors_and_stop_early(folder_dataset, tmp_path):
    from geoalign_store.features import ImageFiles, decoded_batches
    paths = [str(p) for p in sorted(folder_dataset.rglob("*.png"))][:10]
    (tmp_path / "bad.png").write_bytes(b"not a png")
    files = ImageFiles([*paths, str(tmp_path / "bad.png")], image_size=32)
    order = [[10, 3, 0], [9, 8], [1, 2, 4, 5, 6, 7]]
    inline = list(decoded_batches(files, order, workers=0))
    threaded = list(decoded_batches(files, order, workers=3, prefetch=1))
    assert [b["indices"] for b in threaded] == order
    assert list(threaded[0]["errors"]) == [10] and "UnidentifiedImageError" in threaded[0]["errors"][10]
    for a, b in zip(inline, threaded):
        assert [i for i, _ in a["stacks"]] == [i for i, _ in b["stacks"]]
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a["stacks"], b["stacks"]))
    early = decoded_batches(files, [[i] for i in range(11)] * 20, workers=2)
    next(early)
    early.close()  # the queued decodes are dropped; nothing hangs
    with pytest.raises(ValueError, match="decode='fork'"):
        decoded_batches(files, order, workers=2, mode="fork")


def test_other_fingerprint_refused_then_overwritten(tmp_path, folder_dataset):
    store = tmp_path / "fp.zarr"
    run_extract(store, folder_dataset, "split=test")
    with pytest.raises(StoreError, match=r"layers.*overwrite=true"):
        run_extract(store, folder_dataset, "split=test", "layers=[20,28]")
    result = run_extract(store, folder_dataset, "split=test", "layers=[20,28]", "overwrite=true")
    assert result["images_extracted"] == 17
    assert "layer_20" in zarr.open_group(str(store), mode="r")["features/folder/test/drone"]


def test_changed_image_set_refused(tmp_path, folder_dataset):
    data = tmp_path / "data"
    shutil.copytree(folder_dataset, data)
    store = tmp_path / "changed.zarr"
    run_extract(store, data, "split=test")
    (data / "test/drone/0100/view-00.png").unlink()
    with pytest.raises(StoreError, match="changed since it was written"):
        run_extract(store, data, "split=test")


def test_corrupt_image_recorded_and_run_continues(tmp_path, folder_dataset):
    data = tmp_path / "data"
    shutil.copytree(folder_dataset, data)
    (data / "test/drone/0101/view-01.png").write_bytes(b"not a png")
    store = tmp_path / "corrupt.zarr"
    runner = CliRunner()
    args = ["extract", *extract_overrides(store, data, "split=test")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2  # bad data: a known failure
    assert "1 image(s) could not be read" in result.output and "skip_bad=true" in result.output
    group = zarr.open_group(str(store), mode="r")["features/folder/test/drone"]
    errors = {str(i): str(e) for i, e in zip(group["ids"][:], group["errors"][:]) if e}
    assert list(errors) == ["test/drone/0101/view-01.png"]
    assert "UnidentifiedImageError" in errors["test/drone/0101/view-01.png"]
    assert group.attrs["complete"] is True and group.attrs["n_failed"] == 1
    again = runner.invoke(app, [*args, "skip_bad=true"])
    assert again.exit_code == 0, again.output


def test_missing_folder_names_path_and_layout(tmp_path):
    (tmp_path / "test" / "drone" / "0001").mkdir(parents=True)
    result = CliRunner().invoke(app, ["extract", *extract_overrides(tmp_path / "s.zarr", tmp_path)])
    assert result.exit_code == 2
    assert "missing folder" in result.output and "satellite" in result.output
    assert "<view>/<location>/<image>" in result.output


def test_weights_required_for_real_backbone(tmp_path, folder_dataset):
    with pytest.raises(Exception, match="needs weights=PATH"):
        weights_source(compose("extract", ["backbone=dinov3_vith16plus"]).backbone, None)


def test_cluster_run_leaves_thread_environment_alone(tmp_path, folder_dataset):
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    before = {k: os.environ.get(k) for k in keys}
    run_extract(tmp_path / "env.zarr", folder_dataset, "split=test", "cluster=local:1")
    assert {k: os.environ.get(k) for k in keys} == before


def test_truncated_backbone_equals_full_model_hidden_states(folder_dataset):
    """Only the blocks up to the deepest requested layer run, and only those layers are kept:
    their outputs equal the untruncated model's hidden states (transformers' own forward)."""
    from transformers import DINOv3ViTModel
    from geoalign_store.features import layer_tokens
    bcfg = OmegaConf.to_container(compose("extract", ["dataset=folder"]).backbone)
    bb = load_backbone(bcfg, None, [20, 26])
    assert len(bb.model.layer) == 27
    full = DINOv3ViTModel.from_pretrained(weights_source(bcfg, None), local_files_only=True).eval()
    pixels = torch.stack([load_image(p) for p in sorted((folder_dataset / "test/drone").rglob("*.png"))[:3]])
    got = layer_tokens(bb, pixels)
    with torch.inference_mode():
        hidden = full(pixel_values=pixels, output_hidden_states=True).hidden_states
        want = {k: full.norm(hidden[k + 1]).numpy() for k in (20, 26)}
    assert len(hidden) == 33 and sorted(got) == [20, 26]
    for k in (20, 26):
        np.testing.assert_allclose(got[k].numpy(), want[k], rtol=0, atol=1e-6)


def test_bf16_precision_casts_weights_and_stays_close(folder_dataset):
    """precision=bf16: bf16 attention and MLP weights (no autocast); the residual stream, norms,
    layer scales and RoPE stay fp32, so the descriptors stay within 1e-3 of fp32 (with the
    whole model in bf16 the tiny model's were 3e-3 apart)."""
    from geoalign_store.features import gem_descriptor, layer_tokens
    bcfg = OmegaConf.to_container(compose("extract", ["dataset=folder"]).backbone)
    fp32 = load_backbone(bcfg, None, [26, 28], precision="fp32")
    bf16 = load_backbone(bcfg, None, [26, 28], precision="bf16")
    assert fp32.dtype is None and fp32.model.layer[0].mlp.up_proj.weight.dtype == torch.float32
    block = bf16.model.layer[0]
    assert block.mlp.up_proj.weight.dtype == block.attention.q_proj.weight.dtype == torch.bfloat16
    for kept in (bf16.model.norm.weight, block.norm1.weight, block.layer_scale1.lambda1,
                 bf16.model.embeddings.patch_embeddings.weight, bf16.model.rope_embeddings.inv_freq):
        assert kept.dtype == torch.float32
    pixels = torch.stack([load_image(p) for p in sorted((folder_dataset / "test/drone").rglob("*.png"))[:4]])
    a, b = layer_tokens(fp32, pixels), layer_tokens(bf16, pixels)
    for k in (26, 28):
        assert b[k].dtype == torch.float32
        diff = (gem_descriptor(a[k][:, 5:]) - gem_descriptor(b[k][:, 5:])).abs().max()
        assert 0 < diff < 1e-3, float(diff)  # the tiny random model; ViT-H+: benchmarks/gpu.py


def test_compiled_blocks_match_eager_and_a_failed_compile_is_a_clear_error(tmp_path, extracted, folder_dataset):
    """compile=true: the blocks run through torch.compile (one graph for every block; a second
    batch shape makes the batch dimension dynamic) and the stored values stay within float32
    rounding of the eager run. A compiler that cannot run is a ConfigError naming the flag."""
    store = tmp_path / "compiled.zarr"
    run_extract(store, folder_dataset, "compile=true", "split=test")
    eager = view_arrays(extracted)
    group = zarr.open_group(str(store), mode="r")
    for view in ("test/drone", "test/satellite"):
        for name in ("layer_26/desc", "layer_28/desc", "layer_26/cls", "layer_28/cls"):
            got = group[f"features/folder/{view}/{name}"][:]
            np.testing.assert_allclose(got, eager[f"{view}/{name}"], rtol=1e-4, atol=1e-5)
    import torch._inductor.config as inductor_config
    from torch._dynamo import reset
    reset()  # forget the compiled graphs so the next run compiles again
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
        mp.setattr(inductor_config, "fx_graph_cache", False)
        with pytest.raises(ConfigError, match="compile=true: torch.compile failed.*without compile=true"):
            run_extract(tmp_path / "broken.zarr", folder_dataset, "compile=true", "split=test")
    reset()


def test_local_cluster_gives_each_worker_its_own_gpu(monkeypatch):
    """cluster=local:N with device=cuda|auto: worker i is told cuda:i; cpu and an explicit
    cuda:K are left as given. GPUs are faked: only the assignment is checked."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert local_worker_devices(3, "cuda") == ["cuda:0", "cuda:1", "cuda:2"]
    assert local_worker_devices(4, "auto") == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert local_worker_devices(2, "cpu") is None
    assert local_worker_devices(2, "cuda:3") is None
    with pytest.raises(ConfigError, match=r"cluster=local:5 .* only 4 CUDA device\(s\).*local:4"):
        local_worker_devices(5, "cuda")


def test_too_many_gpu_workers_refused_before_anything_is_written(tmp_path, folder_dataset, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    store = tmp_path / "gpus.zarr"
    result = CliRunner().invoke(app, ["extract", *extract_overrides(store, folder_dataset),
                                      "cluster=local:2", "device=cuda"])
    assert result.exit_code == 2 and "only 1 CUDA device(s)" in result.output
    assert not store.exists()


def test_device_plugin_tells_each_local_worker_its_device():
    """What the dask workers themselves hold after the plugin ran (labels only: no GPU used)."""
    from distributed import Client, LocalCluster
    from geoalign_store.features import DevicePerWorker, worker_device
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.register_plugin(DevicePerWorker(["cuda:0", "cuda:1"]))
        told = client.run(lambda dask_worker: (dask_worker.name, worker_device()))
    assert sorted(told.values()) == [(0, "cuda:0"), (1, "cuda:1")]


def test_weights_hash_is_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    import geoalign_store.features.backbone as backbone
    from geoalign_store.config import file_sha256
    monkeypatch.setenv("GEOALIGN_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"a" * 1000)
    calls = []
    monkeypatch.setattr(backbone, "file_sha256", lambda p: calls.append(p) or file_sha256(p))
    first = backbone.cached_sha256(weights)
    assert backbone.cached_sha256(weights) == first == file_sha256(weights) and len(calls) == 1
    weights.write_bytes(b"b" * 1000)                      # same size, new content and mtime
    os.utime(weights, ns=(1, 1))
    assert backbone.cached_sha256(weights) == file_sha256(weights) != first and len(calls) == 2
    entries = json.loads((tmp_path / "cache/weights_sha256.json").read_text())
    assert len(entries) == 1    # the stale entry of the same path was dropped


def test_block_writer_writes_in_order_and_raises_a_failed_write():
    from geoalign_store.features import BlockWriter
    done = []
    writer = BlockWriter(depth=1)
    for i in range(5):
        writer.submit(lambda i=i: (time.sleep(0.01), done.append(i)))
    writer.close()
    assert done == [0, 1, 2, 3, 4]
    failing = BlockWriter()
    with pytest.raises(ZeroDivisionError):
        try:  # the second submit raises at once if the writer already failed; close raises anyway
            failing.submit(lambda: 1 / 0)
            failing.submit(lambda: done.append("after the failed write"))
        finally:
            failing.close()
    assert done[-1] == 4       # nothing written after a failed write


def test_summary_reports_where_the_time_went(tmp_path, folder_dataset):
    result = run_extract(tmp_path / "t.zarr", folder_dataset, "split=test")
    keys = ("listing_s", "weights_hash_s", "backbone_load_s", "first_batch_wait_s",
            "first_batch_compute_s", "steady_s", "write_tail_s", "writes_busy_s")
    assert all(result["timings"][k] >= 0 for k in keys)
    assert result["timings"]["steady_images"] == 17 - 3   # every image after the first batch
