"""The demo end to end: every stage on generated data, through the CLI."""

import json
from pathlib import Path

from typer.testing import CliRunner

from pipelines.cli import app


def test_demo_end_to_end(tmp_path):
    store = tmp_path / "demo.zarr"
    result = CliRunner().invoke(app, ["demo", f"store={store}", "agra_epochs=30", "isms_epochs=5", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["images"] == 570 and summary["heads"] == "geoalign"
    for label in ("raw", "heads"):
        for mode, n_queries in (("D2S", 240), ("S2D", 40)):
            metrics = summary["results"][label][mode]
            assert metrics["n_queries"] == n_queries and 0 <= metrics["recall"]["1"] <= 1
    assert (store / "artefacts/scores/demo-geoalign/S2D/retrievals-all.png").exists()
    assert summary["results"]["heads"]["D2S"]["heads"] == "geoalign"
    # the chosen heads (label-free) are centring, the do-no-harm fallback, or retrieve no worse
    # than the raw descriptors in both directions; on the demo (40 train flights) the gate keeps
    # centring, which doubles S2D's AP (0.12 -> 0.26) and costs D2S 0.014: never worse over both
    chosen = summary["results"]["heads"]["D2S"]["heads_recipe"]
    raw, heads = summary["results"]["raw"], summary["results"]["heads"]
    if chosen != "centre":
        for mode in ("D2S", "S2D"):
            assert heads[mode]["ap"] >= raw[mode]["ap"], (mode, chosen, heads[mode]["ap"], raw[mode]["ap"])
    assert heads["D2S"]["ap"] + heads["S2D"]["ap"] >= raw["D2S"]["ap"] + raw["S2D"]["ap"], (chosen, heads, raw)
    # the demo ends with `locate` of a new drone photo of test location 0040, not in the store
    found = summary["locate"]
    assert "new-drone-0040" in found["image"] and found["truth"]["location"] == "0040"
    assert len(found["top"]) == 5 and all("lat" in t and "lon" in t for t in found["top"])
    assert found["position"] == {"lat": found["top"][0]["lat"], "lon": found["top"][0]["lon"]}
    assert found["truth"]["error_m"] >= 0 and (store / "artefacts/locate").is_dir()
    assert Path(found["picture"]).is_file()
