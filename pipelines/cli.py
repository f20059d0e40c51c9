"""`geoalign`: a thin typer shell over the stages' `run(cfg)` functions.

Every stage takes `key=value` overrides (dotted keys for nesting) and `--json`, which prints the
stage's summary as one JSON object on stdout; progress and logs go to stderr.
"""

from __future__ import annotations

import json
from typing import Callable, List, Optional

import typer
from rich.markup import escape

from geoalign_store.config import ConfigError, compose
from geoalign_store.datasets import DatasetLayoutError
from geoalign_store.features import use_huge_pages
from geoalign_store.report import console, crash_log
from geoalign_store.store import StoreError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="geoalign: unsupervised drone <-> satellite retrieval on frozen DINOv3 features.")



@app.callback()
def _root() -> None:
    """Stages: extract, fit-heads, index, score, locate, check, demo (each takes key=value overrides)."""


USER_ERRORS = (ConfigError, StoreError, DatasetLayoutError)  # known failures: exit 2
OVERRIDES = typer.Argument(None, help="key=value config overrides (dotted keys for nesting), e.g. store=geoalign-demo.zarr seed=1")
JSON = typer.Option(False, "--json", help="print the result summary as one JSON object on stdout")


def run_stage(stage: str, overrides: Optional[List[str]], as_json: bool,
              runner: Callable[[object], dict], render: Callable[[dict], None]) -> dict:
    """Compose, run, render. A known failure (bad config or data, a damaged store or artefact,
    missing weights) prints its one message and exits 2; anything else is a bug: one line and
    the path of a log holding its traceback, exit 1 (never a traceback on the terminal)."""
    try:
        cfg = compose(stage, overrides or [])
        _find_demo_store(stage, cfg, overrides or [])
        result = runner(cfg)
        if as_json:  # keys starting with "_" are for the terminal only
            print(json.dumps({k: v for k, v in result.items() if not k.startswith("_")}), flush=True)
        else:
            render(result)
    except USER_ERRORS as e:  # escaped: "[5]" in a message is text, not rich markup
        console.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    except Exception as e:  # noqa: BLE001 - the one top-level handler: a bug, reported and failed
        log = crash_log(stage, list(overrides or []), e)
        console.print(f"[bold red]unexpected error[/] ({escape(type(e).__name__)}: "
                      f"{escape(str(e).splitlines()[0][:200] if str(e) else '')}); this is a bug in "
                      f"geoalign: the full traceback is in {escape(str(log))}; please report it with "
                      "that file", markup=True, highlight=False)
        raise typer.Exit(1) from None
    return result


def _lazy(module: str) -> Callable:
    """The stage's run, imported when called: after compose, so a bad value is refused before
    torch and the rest of a stage's imports load (seconds)."""
    def runner(*args):
        import importlib
        return importlib.import_module(f"pipelines.{module}").run(*args)
    return runner


DEMO_STORE = "./geoalign-demo.zarr"
READING_STAGES = ("fit-heads", "import-heads", "index", "score", "locate", "check")


def _find_demo_store(stage: str, cfg, overrides: list[str]) -> None:
    """After `geoalign demo`, the stages that follow find its store: when no store= was given,
    the default ./geoalign.zarr does not exist and the demo's does, the demo's is used (said)."""
    from pathlib import Path
    given = any(o.split("=", 1)[0].strip() == "store" for o in overrides)
    if given or stage not in READING_STAGES or Path(str(cfg.store)).exists():
        return
    if Path(DEMO_STORE).exists() and cfg.get("dataset") in (None, "demo"):
        console.print(f"no store at {cfg.store}: using {DEMO_STORE}, the store `geoalign demo` "
                      "wrote (pass store=PATH to choose)", highlight=False)
        cfg.store = DEMO_STORE


def _render_extract(result: dict) -> None:
    from rich.table import Table
    table = Table(title=f"extract {result['dataset']} -> {result['store']}")
    for col in ("view", "images", "complete", "failed"):
        table.add_column(col)
    for name, info in result["views"].items():
        table.add_row(name, str(info["n"]), str(info["complete"]), str(info["n_failed"]))
    console.print(table)
    skipped = {k: v["n_skipped"] for k, v in result["views"].items() if v.get("n_skipped")}
    for name, n in skipped.items():  # map tiles mostly nodata or black: left out on purpose
        console.print(f"{name}: {n} tile(s) skipped (mostly nodata or black)", highlight=False)
    console.print(f"{result['images_extracted']} images extracted in {result['wall_s']:.1f} s, "
                  f"{result['bytes_written'] / 1e6:.1f} MB written")


@app.command()
def extract(overrides: Optional[List[str]] = OVERRIDES, as_json: bool = JSON) -> None:
    """Run the frozen DINOv3 backbone over a dataset into the Zarr feature store."""
    result = run_stage("extract", overrides, as_json, _lazy("extract"), _render_extract)
    if result["n_failed"]:
        for item in result["failed"][:10]:
            console.print(f"  unreadable: {item['id']}: {item['reason']}", highlight=False)
        skip = result["skip_bad"]
        console.print(f"[bold {'yellow' if skip else 'red'}]{result['n_failed']} image(s) could "
                      f"not be read[/] (recorded in the store's `errors` arrays)"
                      + ("" if skip else "; add skip_bad=true to accept this"))
        if not skip:  # bad data is a known failure: exit 2, as every other
            raise typer.Exit(2)


def _render_index(result: dict) -> None:
    for item in result["indices"]:
        verb = f"built in {item['build_s']:.2f} s" if item["built"] else "up to date"
        console.print(f"index {item['name']}: {item['n']} x {item['dim']} ({verb})")
        if item.get("factory"):  # ivfpq: what the rule chose, and where the time went
            _render_sharded(item)
        for what, why in (item.get("repaired") or {}).items():   # verify=true found and redid these
            console.print(f"  repaired {what} (found: {why})", highlight=False)


def _render_sharded(item: dict) -> None:
    """A sharded index's line: this run's build (shards built and reused, seconds), or, reused as
    it stands, what it holds (its last build's figures are in --json's last_build)."""
    shards, t = item["shards"], item["timings"]
    size = sum(f["bytes"] for f in item["files"].values()) / 1e6
    head = f"  {item['factory']} nprobe={item['params']['nprobe']}: {shards['n']} shard(s)"
    if not item["built"]:
        console.print(f"{head} in the index, {size:.1f} MB", highlight=False)
        return
    console.print(f"{head} ({shards['built']} built, {shards['reused']} reused), train {t['train_s']:.1f} s, "
                  f"add {t['add_s']:.1f} s, merge {t['merge_s']:.1f} s, {size:.1f} MB", highlight=False)
    devices = item.get("add_devices") or {}
    if any(name != "cpu" for name in devices) or item.get("gpu_fallback"):   # faiss-gpu at hand
        added = ", ".join(f"{count} on {name}" for name, count in sorted(devices.items()))
        console.print(f"  shards added: {added}", highlight=False)
    if item.get("gpu_fallback"):
        console.print(f"  [yellow]on the CPU instead of the GPU:[/] {item['gpu_fallback']}", highlight=False)


def _render_score(result: dict) -> None:
    from rich.table import Table
    from geoalign_store.report import METRIC_KEYS, table_rows
    table = Table(title=f"{result['dataset']} {result['mode']} | heads={result['heads']} | "
                        f"protocol={result['gallery_protocol']}")
    for col in ("subset", "queries", "gallery", "R@1", "R@5", "R@10", "R@1%", "AP", "AP non-interp"):
        table.add_column(col, justify="right")
    for name, m in table_rows(result):
        table.add_row(name, str(m["n_queries"]), str(m["n_gallery"]),
                      *(f"{100 * m['recall'][k]:.2f}" for k in METRIC_KEYS),
                      f"{100 * m['ap']:.2f}", f"{100 * m['ap_noninterp']:.2f}")
    console.print(table)
    if "dis@1_m" in result:
        from geoalign_store.retrieval import describe_distances
        console.print(describe_distances(result), highlight=False)
    if "sdm" in result:  # a map gallery: Game4Loc's SDM@K in metres, and the truth the figures use
        sdm = ", ".join(f"SDM@{k} {v:.3f}" for k, v in result["sdm"].items())
        console.print(f"{sdm}; truth: {result.get('truth')}", highlight=False)
    outputs = result.get("_outputs", {})
    console.print(f"report: {outputs.get('report')}  pictures: {', '.join(outputs.get('pictures', [])) or 'none'}")


def _with_mode(overrides, mode):
    return [*(overrides or []), *([f"mode={mode}"] if mode else [])]


@app.command()
def index(overrides: Optional[List[str]] = OVERRIDES, as_json: bool = JSON,
          mode: Optional[str] = typer.Option(None, "--mode", help="D2S | S2D")) -> None:
    """Build the FAISS index of a direction's gallery (reused while its embeddings are unchanged)."""
    run_stage("index", _with_mode(overrides, mode), as_json, _lazy("index"), _render_index)


@app.command()
def score(overrides: Optional[List[str]] = OVERRIDES, as_json: bool = JSON,
          mode: Optional[str] = typer.Option(None, "--mode", help="D2S | S2D")) -> None:
    """Recall@K and AP of a direction, exactly as the benchmark's official evaluation."""
    run_stage("score", _with_mode(overrides, mode), as_json, _lazy("score"), _render_score)


def _render_fit(result: dict) -> None:
    verb = "trained" if result["trained"] else "up to date"
    chosen = (result.get("selection") or {}).get("chosen")
    what = f"chosen: {chosen}" if chosen else f"last epoch: {result['final']}"
    console.print(f"heads {result['name']} ({verb}) in {result['folder']}; {what}", highlight=False)


@app.command("fit-heads")
def fit_heads(overrides: Optional[List[str]] = OVERRIDES, as_json: bool = JSON) -> None:
    """Fit heads on the store's train descriptors without cross-view labels: candidates chosen
    label-free (preset=improved) or the release's AGRA + ISMS (preset=paper); resumable."""
    run_stage("fit-heads", overrides, as_json, _lazy("fit_heads"), _render_fit)


@app.command("import-heads")
def import_heads(overrides: Optional[List[str]] = OVERRIDES, as_json: bool = JSON) -> None:
    """Import the paper's published AGRA/ISMS weights (agra=PATH isms=PATH) into the store."""
    run_stage("import-heads", overrides, as_json, _lazy("import_heads"),
              lambda r: console.print(f"imported heads {r['name']} (C={r['dim']}) into {r['folder']}"))


@app.command()
def simulate(overrides: Optional[List[str]] = OVERRIDES, as_json: bool = JSON) -> None:
    """Write a simulated cross-view store with known ground truth (raw/centred/oracle R@1)."""
    run_stage("simulate", overrides, as_json, _lazy("simulate"),
              lambda r: console.print("D2S R@1 " + ", ".join(f"{k} {100 * v:.1f}" for k, v in r["d2s_r1"].items())))


def _render_check(result: dict) -> None:
    from rich.table import Table
    table = Table(title=f"check {result['store']}")
    for col in ("view", "images", "blocks done", "damaged blocks", "other arrays damaged"):
        table.add_column(col)
    for path, info in result["views"].items():
        table.add_row(path.removeprefix("features/"), str(info["n"]),
                      f"{info['blocks_done']}/{info['blocks']}", str(len(info["damaged"])),
                      ", ".join(info["metadata_damaged"]) or "0")
    console.print(table)
    for path, info in result["views"].items():
        for item in info["damaged"]:
            console.print(f"  damaged: {path} block {item['block']} rows {item['rows']}: {item['reason']}",
                          highlight=False)
        for name, why in info["metadata_damaged"].items():
            console.print(f"  damaged: {path}/{name}: {why}", highlight=False)
        if info.get("repair"):
            console.print(f"  repair {path}: {info['repair']}", highlight=False)
    if result.get("metadata_documents_damaged"):
        from geoalign_store.store import metadata_error
        console.print(f"  damaged metadata: {metadata_error(result['store'])}", highlight=False)
    for path, why in result.get("artefacts_damaged", {}).items():
        console.print(f"  damaged artefact: artefacts/{path}: {why}", highlight=False)
    for item in result["stale"]:
        console.print(f"  stale: {item['artefact']}: {item['why']}; recompute: {item['recompute']}",
                      highlight=False)
    stale = f"; {len(result['stale'])} stale artefact(s) listed above" if result["stale"] else ""
    console.print(f"store OK: every block read back and its checksums verified{stale}" if result["ok"] else
                  f"[bold red]{result['n_damaged']} damaged block(s), array(s), document(s) or artefact(s)[/]")


@app.command()
def check(overrides: Optional[List[str]] = OVERRIDES, as_json: bool = JSON) -> None:
    """Read every block of every array in the store; name damaged or missing chunks (exit 1)."""
    result = run_stage("check", overrides, as_json, _lazy("check"), _render_check)
    if not result["ok"]:
        raise typer.Exit(1)


def _render_answer(answer: dict) -> None:
    from rich.table import Table
    table = Table(title=f"{answer['image']} | heads={answer['heads']}")
    for col in ("rank", "satellite id", "location", "score", "lat", "lon"):
        table.add_column(col, justify="right")
    for item in answer["top"]:
        table.add_row(str(item["rank"]), item["satellite_id"], item["location"], f"{item['score']:.4f}",
                      *((f"{item['lat']:.6f}", f"{item['lon']:.6f}") if "lat" in item else ("-", "-")))
    console.print(table)
    if answer.get("position"):
        pos = answer["position"]
        how = (f"refined from {pos['n_tiles']} agreeing tiles, +- {pos['uncertainty_m']:.0f} m"
               if "uncertainty_m" in pos else "top-1")
        console.print(f"position ({how}): {pos['lat']:.6f}, {pos['lon']:.6f}", highlight=False)
    truth = answer.get("truth")
    if truth:
        where = f" ({truth['lat']:.6f}, {truth['lon']:.6f})" if "lat" in truth else ""
        error = f"; error {truth['error_m']:.1f} m" if "error_m" in truth else ""
        error += f" (top-1 tile centre: {truth['tile_error_m']:.1f} m)" if "tile_error_m" in truth else ""
        console.print(f"true location: {truth['location']}{where}{error}", highlight=False)
    if answer.get("picture"):
        console.print(f"picture: {answer['picture']}", highlight=False)


def _render_locate(result: dict) -> None:
    for answer in result["answers"]:
        _render_answer(answer)
    t = result["timing_s"]
    console.print(f"{len(result['answers'])} image(s) against {result['dataset']} ({result['search']}): "
                  f"load {t['load']:.2f} s, locate {t['locate']:.2f} s", highlight=False)


def _split_locate_args(args) -> tuple[list[str], list[str]]:
    """Images/folders vs key=value overrides (an existing path is always an image)."""
    import re
    from pathlib import Path
    is_override = lambda a: bool(re.match(r"^[A-Za-z_][\w.]*=", a)) and not Path(a).exists()  # noqa: E731
    return [a for a in args or () if not is_override(a)], [a for a in args or () if is_override(a)]


@app.command()
def locate(args: Optional[List[str]] = typer.Argument(None, help="drone images or folders, and key=value "
                                                                 "overrides, e.g. photo.jpg store=geoalign.zarr k=5"),
           as_json: bool = typer.Option(False, "--json", help="print one JSON object per image on stdout")) -> None:
    """Where was this drone photo taken? Ranked satellite tiles of the store, with coordinates."""
    images, overrides = _split_locate_args(args)
    render = (lambda r: [print(json.dumps(a), flush=True) for a in r["answers"]]) if as_json else _render_locate
    run_stage("locate", overrides, False, lambda cfg: _lazy("locate")(cfg, images), render)


def _render_map_demo(result: dict) -> None:
    from rich.table import Table
    tiles = ", ".join(f"{n} tiles of {s}" for s, n in result["tiles"].items())
    console.print(f"map {result['map']}: {tiles}; {result['n_photos']} photos", highlight=False)
    table = Table(title=f"geoalign demo map=true ({result['wall_s']:.0f} s; truth: the drone's position)")
    for col in ("heads", "position", "R@1", "AP", "Dis@1 m", "<=25 m", "<=50 m", "<=100 m", "SDM@3"):
        table.add_column(col, justify="right")
    for label, r in result["results"].items():
        s = r["score"]
        for name in ("top1_tile", "refined"):
            m = r["refined"][name]
            ranks = (f"{100 * s['recall']['1']:.1f}", f"{100 * s['ap']:.1f}") if name == "top1_tile" else ("", "")
            table.add_row(label, "tile" if name == "top1_tile" else name, *ranks, f"{m['dis@1_m']:.0f}",
                          *(f"{100 * m['within_m'][k]:.0f}%" for k in ("25", "50", "100")),
                          f"{s['sdm']['3']:.3f}" if name == "top1_tile" else "")
    console.print(table)
    console.print(f"a located photo: {result['results']['heads']['picture']}", highlight=False)


def _render_demo(result: dict) -> None:
    if "map" in result:
        return _render_map_demo(result)
    from rich.table import Table
    table = Table(title=f"geoalign demo ({result['images']} images, {result['wall_s']:.0f} s)")
    for col in ("embedding", "mode", "R@1", "R@5", "R@10", "AP", "AP non-interp"):
        table.add_column(col, justify="right")
    for label, modes in result["results"].items():
        for mode, m in modes.items():
            table.add_row(label, mode, *(f"{100 * m['recall'][k]:.2f}" for k in ("1", "5", "10")),
                          f"{100 * m['ap']:.2f}", f"{100 * m['ap_noninterp']:.2f}")
    console.print(table)
    for path in result.get("_written", []):
        console.print(f"wrote {path}", highlight=False)
    if result.get("locate"):
        console.print("locate: a new drone photo of a test location (not in the store)")
        _render_answer(result["locate"])


@app.command()
def demo(overrides: Optional[List[str]] = OVERRIDES, as_json: bool = JSON) -> None:
    """Every stage on the bundled (generated) demo data, on a CPU, in minutes."""
    run_stage("demo", overrides, as_json, _lazy("demo"), _render_demo)


def main() -> None:
    use_huge_pages()   # before torch loads: large temporaries fault 2 MiB pages (features/host_memory.py)
    app()


if __name__ == "__main__":
    main()
