"""``stale evaluate``: detection mAP of a prediction file, as the official ActivityNet evaluator computes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from stale_cli.cli.app import (
    ClassesFileOption,
    ClassesOption,
    Command,
    OutputOption,
    app,
    read_class_names,
    stdout,
    user_errors,
    wrote,
)


def results_table(result: dict, title: str):
    """mAP per tIoU and the average, then AP per class, in percent (a TextTable)."""
    from stale_cli.cli.table import TextTable

    n = len(result["tiou"])
    table = TextTable(title, ["class", *(f"@{t:g}" for t in result["tiou"]), "avg"], [False] + [True] * (n + 1))
    for name, aps in result["per_class"].items():
        table.rows.append([name, *(f"{100 * a:.1f}" for a in aps), f"{100 * sum(aps) / len(aps):.1f}"])
    table.rules.add(len(table.rows))
    table.bold.add(len(table.rows))
    table.rows.append(["mAP", *(f"{100 * m:.1f}" for m in result["mAP"]), f"{100 * result['average_mAP']:.1f}"])
    return table


@app.command("evaluate", cls=Command)
def evaluate_command(
    predictions: Path = typer.Argument(
        ..., help="Predictions: ActivityNet results JSON (as `stale detect` writes) or CSV video,label,start,end,score."
    ),
    annotations: Path = typer.Option(..., "--annotations", "-a", help="Ground truth, ActivityNet-format JSON."),
    subset: Optional[str] = typer.Option(
        None, "--subset", help="Subset of the annotations to evaluate on.",
        show_default="test if present, else validation"
    ),
    split: Optional[str] = typer.Option(
        None, "--split", help="Evaluate only the unseen classes of this zero-shot split, e.g. thumos14/75_25/3."
    ),
    classes: Optional[str] = ClassesOption,
    classes_file: Optional[Path] = ClassesFileOption,
    tiou: Optional[str] = typer.Option(
        None,
        "--tiou",
        help="tIoU thresholds, '0.3,0.5,0.7' or 'start:stop:step'.",
        show_default="THUMOS14's 0.3:0.7:0.1 for a test subset or a thumos14 split, else ActivityNet's 0.5:0.95:0.05",
    ),
    output: Optional[Path] = OutputOption(
        "Also write the results as JSON here; - prints the JSON on stdout instead of the table.", metavar="FILE|-"
    ),
) -> None:
    """Compute detection mAP per tIoU threshold, its average and the AP of each class.

    Numbers are those of the official ActivityNet evaluator (eval_detection.py): predictions of videos without
    ground truth count as false positives, classes without predictions as AP 0.

    Example: stale evaluate preds.json --annotations thumos14.json --split thumos14/75_25/0
    """
    from stale_cli.detection.outputs import write_stdout
    from stale_cli.errors import InputError
    from stale_cli.evaluation.evaluate import evaluate_files, parse_tious
    from stale_cli.fileio import write_json_atomic
    from stale_cli.guard import OutputGuard

    with user_errors():
        if split is not None and (classes is not None or classes_file is not None):
            raise InputError("give either --split or --classes / --classes-file, not both")
        to_stdout = output is not None and str(output) == "-"
        if output is not None and not to_stdout:
            guard = OutputGuard()
            guard.input(predictions, f"the predictions file {predictions}")
            guard.input(annotations, f"the annotations file {annotations}")
            guard.input(classes_file, f"the classes file {classes_file}")
            guard.output(output, "--output")
        names = read_class_names(classes, classes_file, required=False)
        tious = parse_tious(tiou) if tiou is not None else None
        result = evaluate_files(predictions, annotations, subset, split, names, tious)
        what = f"split {split}, unseen classes" if split else ("listed classes" if names else "all classes")
        title = f"{predictions.name}: {result['subset']} subset, {what} ({len(result['per_class'])}), AP %"
        if to_stdout:
            write_stdout(json.dumps(result, indent=2) + "\n", stdout.file)
            return
        results_table(result, title).print(stdout)
        stdout.print(f"average mAP: {100 * result['average_mAP']:.2f}")
        if output is not None:
            write_json_atomic(output, result)
            wrote(output)
