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
    # the chosen heads (label-free) must not retrieve worse than the raw descriptors on the demo
    chosen = summary["results"]["heads"]["D2S"]["heads_recipe"]
    for mode in ("D2S", "S2D"):
        raw, heads = summary["results"]["raw"][mode], summary["results"]["heads"][mode]
        assert heads["ap"] >= raw["ap"], (mode, chosen, heads["ap"], raw["ap"])
    # the demo ends with `locate` of a new drone photo of test location 0040, not in the store
    found = summary["locate"]
    assert "new-drone-0040" in found["image"] and found["truth"]["location"] == "0040"
    assert len(found["top"]) == 5 and all("lat" in t and "lon" in t for t in found["top"])
    assert found["position"] == {"lat": found["top"][0]["lat"], "lon": found["top"][0]["lon"]}
    assert found["truth"]["error_m"] >= 0 and (store / "artefacts/locate").is_dir()
    assert Path(found["picture"]).is_file()
