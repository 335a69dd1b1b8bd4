"""`nag eval --quick` end to end on the embedded model: the shape of the outputs, not the numbers."""

from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

from nag_guidance.cli import app
from nag_guidance.eval.suite import conditions


def test_quick_eval_writes_every_output(tmp_path):
    out, docs = tmp_path / "run", tmp_path / "docs"
    docs.mkdir()
    result = CliRunner().invoke(app, ["eval", "--quick", "--seeds", "2", "--out", str(out), "--docs", str(docs)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["label"] for r in rows} == {c.label for c in conditions(quick=True)}
    assert all(r["kind"] == "colour" and int(r["samples"]) > 0 for r in rows)
    records = json.loads((out / "results.json").read_text())
    nag = next(r for r in records if r["condition"]["method"] == "nag")
    assert 0 <= nag["result"]["adherence"] <= 1
    # sample strips are named by item key, so a changed suite never reuses another condition's file
    assert all(r["sample"] == f"{r['key']}.png" and (out / "samples" / r["sample"]).exists() for r in records)
    assert nag["result"]["suppression"] is None or nag["result"]["suppression"] <= 1  # None: baseline never showed it
    # an unguided image depends on prompt and seed only: 1 prompt x 2 seeds, read against 4 negatives
    none = next(r for r in records if r["condition"]["method"] == "none")["result"]
    assert (none["samples"], none["rows"], nag["result"]["samples"]) == (2, 8, 8)
    assert none["seeds"] == [1000, 2]  # the reporting range by default
    assert nag["result"]["negative_rate_low"] <= nag["result"]["negative_rate"] <= nag["result"]["negative_rate_high"]
    page = (docs / "results.md").read_text()
    assert "nag eval --quick" in page and "| condition |" in page and "1000–1001 (reporting range)" in page
    assert (docs / "eval-suppression-fidelity.png").stat().st_size > 0
    assert (docs / "eval-grid-student-1.png").stat().st_size > 0
    # resumable: a second run finds everything done and recomputes nothing, past a line that is not a record
    rank = out / "manifest-rank0.jsonl"
    rank.write_text(rank.read_text() + "[1, 2, 3]\n")
    again = CliRunner().invoke(app, ["eval", "--quick", "--seeds", "2", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert f"warning: {rank}, line {len(rows) + 1}: not a record" in again.output, again.output
    assert len((out / "manifest.jsonl").read_text().splitlines()) == len(rows)


def test_quick_eval_of_tiny_flux_compares_both_pooled_vectors(tmp_path):
    out, docs = tmp_path / "run", tmp_path / "docs"
    docs.mkdir()
    arguments = ["eval", "--model", "tiny-flux", "--quick", "--seeds", "2", "--out", str(out), "--docs", str(docs)]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    records = json.loads((out / "results.json").read_text())
    assert {r["condition"]["model"] for r in records} == {"tiny-flux"}
    assert sorted(str(r["condition"]["pooled"]) for r in records) == ["None", "negative", "prompt"]
    page = (docs / "tiny-flux-results.md").read_text()
    assert page.startswith("# Results: NAG vs CFG vs VSF vs nothing on the embedded `tiny-flux` model")
    assert "pooled=negative" in page and not (docs / "results.md").exists()
    assert (docs / "tiny-flux-eval-grid-student-1.png").stat().st_size > 0


def test_an_unknown_model_without_clip_weights_names_the_embedded_ones(tmp_path):
    result = CliRunner().invoke(app, ["eval", "--model", "tiny-fluxx", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "--model tiny or --model tiny-flux" in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()
