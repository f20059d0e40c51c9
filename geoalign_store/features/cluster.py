"""Where dask tasks run: `cluster=local:N` (a LocalCluster of N worker processes, one thread each,
each task given the machine's cores / N) or a scheduler address (a real cluster). The one engine
both `extract` (a task per block of images) and `index` (a task per shard of the gallery) submit
to, with the same keys.
"""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def environment_kept():
    """distributed's LocalCluster sets OMP/MKL/OPENBLAS_NUM_THREADS=1 in *this* process's
    environment for its workers; left there, they would silently single-thread every later
    subprocess (and change its floating-point results). Put the environment back."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def dask_client(address: str, devices: list[str] | None = None):
    """(client, threads a task may use: None on a real cluster) for `cluster=address`; the
    LocalCluster (if any) and the client are closed on exit, the environment put back.
    devices: what each local worker computes on (worker_devices.DevicePerWorker)."""
    from distributed import Client, LocalCluster
    address = str(address)
    with environment_kept():
        cluster = None
        if address.startswith("local:"):
            n = int(address.split(":", 1)[1])
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            client, threads = Client(cluster), max(1, (os.cpu_count() or 1) // n)
            if devices:
                from .worker_devices import DevicePerWorker
                client.register_plugin(DevicePerWorker(devices))
        else:
            client, threads = Client(address), None
        try:
            yield client, threads
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def local_workers(address) -> int | None:
    """N of `local:N`, None for a scheduler address or no cluster."""
    text = str(address or "")
    return int(text.split(":", 1)[1]) if text.startswith("local:") else None
