"""`geoalign`: a thin typer shell over the stages' `run(cfg)` functions.

Every stage takes `key=value` overrides (dotted keys for nesting) and `--json`, which prints the
stage's summary as one JSON object on stdout; progress and logs go to stderr.
"""

from __future__ import annotations

import json
from typing import Callable, List, Optional

import typer

from geoalign_store.config import ConfigError, compose
from geoalign_store.datasets import DatasetLayoutError
from geoalign_store.store import StoreError

from .progress import console

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="geoalign: unsupervised drone <-> satellite retrieval on frozen DINOv3 features.")



@app.callback()
def _root() -> None:
    """Stages: extract, fit-heads, index, score, demo (each takes key=value overrides)."""


USER_ERRORS = (ConfigError, StoreError, DatasetLayoutError)
OVERRIDES = typer.Argument(None, help="key=value config overrides, e.g. dataset=demo batch_size=8")
JSON = typer.Option(False, "--json", help="print the result summary as one JSON object on stdout")


def run_stage(stage: str, overrides: Optional[List[str]], as_json: bool,
              runner: Callable[[object], dict], render: Callable[[dict], None]) -> dict:
    try:
        cfg = compose(stage, overrides or [])
        result = runner(cfg)
    except USER_ERRORS as e:
        console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(result), flush=True)
    else:
        render(result)
    return result


def _render_extract(result: dict) -> None:
    from rich.table import Table
    table = Table(title=f"extract {result['dataset']} -> {result['store']}")
    for col in ("view", "images", "complete", "failed"):
        table.add_column(col)
    for name, info in result["views"].items():
        table.add_row(name, str(info["n"]), str(info["complete"]), str(info["n_failed"]))
    console.print(table)
    console.print(f"{result['images_extracted']} images extracted in {result['wall_s']:.1f} s, "
                  f"{result['bytes_written'] / 1e6:.1f} MB written")


@app.command()
def extract(overrides: Optional[List[str]] = OVERRIDES, as_json: bool = JSON) -> None:
    """Run the frozen DINOv3 backbone over a dataset into the Zarr feature store."""
    from . import extract as stage
    result = run_stage("extract", overrides, as_json, stage.run, _render_extract)
    if result["n_failed"]:
        for item in result["failed"][:10]:
            console.print(f"  unreadable: {item['id']}: {item['reason']}", highlight=False)
        skip = result["skip_bad"]
        console.print(f"[bold {'yellow' if skip else 'red'}]{result['n_failed']} image(s) could "
                      f"not be read[/] (recorded in the store's `errors` arrays)"
                      + ("" if skip else "; add skip_bad=true to accept this"))
        if not skip:
            raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
