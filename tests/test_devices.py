import pytest
import torch

from geoalign_store.config import ConfigError
from geoalign_store.devices import resolve_device


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
