"""Tables for people (stale_cli/cli/table.py): never a number cut to ``0.8…``, plain text where a rich table does
not fit."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from stale_cli.cli import app


def _summary(tious):
    return {"setting": "75_25", "dataset": "activitynet13", "test_subset": "validation", "tiou": tious,
            "rows": {"clip": {"name": "training-free CLIP (baseline)", "splits": list(range(10)),
                              "mAP_mean": [0.81234] * len(tious), "mAP_std": [0.0456] * len(tious),
                              "average_mAP_mean": 0.23456, "average_mAP_std": 0.0123}},
            "paper": {"mAP": [38.2] + [None] * (len(tious) - 1), "average_mAP": 24.9}}


@pytest.mark.parametrize("terminal, width", [(False, 80), (True, 80), (True, 300)])
def test_zero_shot_table_keeps_every_number(terminal, width):
    from rich.console import Console

    from stale_cli.cli.protocol import summary_table

    tious = [round(0.5 + 0.05 * i, 2) for i in range(10)]
    console = Console(force_terminal=terminal, width=width, record=True, markup=False)
    summary_table(_summary(tious)).print(console)
    text = console.export_text()
    assert "…" not in text and text.count("81.2±4.6") == 10 and "23.5±1.2" in text and "24.9" in text
    assert all(f"@{t:g}" in text for t in tious)
    if terminal and width == 300:
        assert "┃" in text  # a rich table where it fits
    else:
        assert "┃" not in text and "training-free CLIP (baseline)" in text  # plain aligned text


def test_evaluate_table_in_a_batch_log_is_plain_and_whole(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"database": {"v1": {"subset": "validation", "duration": 30, "annotations": [
        {"segment": [1, 5], "label": "Playing a very long named instrument with friends"}]}}}))
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps({"results": {"v1": [
        {"label": "Playing a very long named instrument with friends", "score": 0.9, "segment": [1, 4.5]}]}}))
    r = CliRunner().invoke(app, ["evaluate", str(preds), "-a", str(ann)], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("Playing"))
    assert row.split()[-11:] == ["100.0"] * 8 + ["0.0"] * 2 + ["80.0"], row  # tIoU 0.875
    assert "…" not in r.stdout and "┃" not in r.stdout
