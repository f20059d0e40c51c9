"""Which device each dask worker computes on. Kept apart from extraction.py so that an
in-process `extract` never imports dask's distributed (a third of a second of every run)."""

from __future__ import annotations

from distributed.diagnostics.plugin import WorkerPlugin

_WORKER_DEVICE: dict[str, str] = {}   # this dask worker's own device, set by DevicePerWorker


class DevicePerWorker(WorkerPlugin):
    """dask worker plugin: LocalCluster worker number i (its name) computes on devices[i], so
    N workers use N GPUs instead of all sharing cuda:0. A restarted worker gets it again."""

    name = "geoalign-device-per-worker"

    def __init__(self, devices: list[str]):
        self.devices = list(devices)

    def setup(self, worker) -> None:
        _WORKER_DEVICE["device"] = self.devices[int(worker.name) % len(self.devices)]


def worker_device() -> str | None:
    return _WORKER_DEVICE.get("device")
