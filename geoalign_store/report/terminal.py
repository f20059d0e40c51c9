"""Terminal output: progress and tables go to stderr, so `--json` leaves stdout clean."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

# Written to a file or a pipe, lines are not cut at 80 columns: full ids, whole progress lines.
console = Console(stderr=True, width=None if sys.stderr.isatty() or "COLUMNS" in os.environ else 1000)


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


def crash_log(stage: str, argv: list[str], error: BaseException) -> Path:
    """Write the full traceback of an unexpected failure to a log file (as pip and conda do) and
    return its path: the terminal gets one line, the report of a bug gets everything."""
    import datetime
    import os
    import platform
    import sys
    import traceback
    folder = Path(os.environ.get("GEOALIGN_LOG_DIR") or
                  Path(os.environ.get("GEOALIGN_CACHE", Path.home() / ".cache" / "geoalign")) / "logs")
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = folder / f"geoalign-{stage}-{stamp}-{os.getpid()}.log"
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    path.write_text(f"geoalign {stage} {' '.join(argv)}\npython {sys.version.split()[0]} on "
                    f"{platform.platform()}\ncwd {os.getcwd()}\n\n{text}")
    return path
