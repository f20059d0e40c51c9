"""Torch's large CPU tensors on huge pages (features/host_memory.py), as the CLI runs them: each
large temporary faults in 2 MiB pages, not 4 KiB ones. Counted in page faults, never in time;
each case runs in a child process (torch reads the switch once, at its first allocation)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
pytestmark = pytest.mark.skipif(not THP.exists() or "[never]" in THP.read_text(),
                                reason="transparent huge pages off in this kernel (Linux only)")

ARRAY_MB, ROUNDS = 128, 4
PAGES = ROUNDS * ARRAY_MB * 2 ** 20 // os.sysconf("SC_PAGE_SIZE")   # 4 KiB faults of every round

# the page faults of ROUNDS temporaries of ARRAY_MB, each filled then freed; torch loaded only here
CHILD = f"""
import resource, sys
def faults():
    assert "torch" not in sys.modules
    import torch
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range({ROUNDS}):
        temp = torch.empty({ARRAY_MB} * 2 ** 20 // 8, dtype=torch.float64)
        temp.fill_(1.0)
        del temp
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
APPLIED = "from geoalign_store.features import use_huge_pages\nprint(use_huge_pages())\nfaults()"


def run(setup: str, **env) -> list[str]:
    environ = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", CHILD + setup], capture_output=True, text=True,
                         env={**environ, **env}, check=True)
    return out.stdout.split()


def test_large_tensors_fault_huge_pages():
    four_kib = int(run("faults()")[-1])
    applied, huge = run(APPLIED)
    assert four_kib > 0.9 * PAGES          # torch's default: one fault per 4 KiB page
    assert applied == "True" and int(huge) < four_kib / 4


def test_the_cli_entry_point_sets_it_before_torch_loads():
    # `geoalign` is pipelines.cli:main (pyproject.toml); the typer app replaced by the count
    assert int(run("import pipelines.cli as cli\ncli.app = faults\ncli.main()")[-1]) < PAGES / 4


def test_the_users_choice_is_kept():
    said, faulted = run(APPLIED, THP_MEM_ALLOC_ENABLE="0")
    assert said == "False" and int(faulted) > 0.9 * PAGES


def test_too_late_once_torch_is_loaded():
    said, _ = run("import torch\n" + APPLIED.replace("faults()", "print(0)"))
    assert said == "False"
