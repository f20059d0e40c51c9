import subprocess
import sys
from pathlib import Path

import pytest
import torch

from geoalign_store.config import ConfigError
from geoalign_store.features import resolve_device


def test_cpu_and_auto_resolve_on_a_machine_without_gpu():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "tpu", "cuda:-1", ""])
def test_bad_device_names_are_config_errors_naming_the_key(name):
    with pytest.raises(ConfigError, match="device="):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu_is_refused_with_the_way_out():
    with pytest.raises(ConfigError, match=r"no CUDA device is visible\); use device=cpu"):
        resolve_device("cuda:1")


def test_device_auto_without_a_gpu_driver_is_the_cpu_without_loading_torch():
    """A CPU scoring process never pays torch's import: `auto` looks for a GPU driver first."""
    code = ("import sys\nfrom geoalign_store.features import devices\n"
            "devices.GPU_DEVICE_FILES = ('/nonexistent/nvidiactl',)\n"
            "print(devices.device_name('auto'), devices.device_name('cpu'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["cpu", "cpu", "False"], out.stderr[-2000:]


def test_device_names_and_torch_devices_agree():
    from geoalign_store.features import device_name
    assert device_name("cpu") == "cpu" and resolve_device("cpu") == torch.device("cpu")
    assert device_name("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
