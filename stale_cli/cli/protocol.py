"""``stale zero-shot``: the paper's zero-shot protocol (train per split, detect, evaluate, Table 1 row)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stale_cli.cli.app import (
    ClipModelOption,
    ClipWeightsOption,
    Command,
    DeviceOption,
    ProgressOption,
    app,
    check_range,
    info,
    resolve_device,
    show_progress,
    stdout,
    user_errors,
    wrote,
)
from stale_cli.cli.train import (
    EPOCHS_DEFAULT,
    BatchSizeOption,
    DropoutOption,
    FreezeTextOption,
    LrPromptOption,
    LrOption,
    LrTextOption,
    PromptInitOption,
    SeedOption,
    check_training_options,
)


def summary_table(summary: dict):
    from stale_cli.cli.table import TextTable
    from stale_cli.evaluation.protocol import title

    n = len(summary["tiou"])
    table = TextTable(
        f"{title(summary)}: unseen classes, {summary['test_subset']} subset, mAP % (mean ± std)",
        ["method", "splits", *(f"@{t:g}" for t in summary["tiou"]), "avg"],
        [False] + [True] * (n + 2),
    )
    for row in summary["rows"].values():
        table.rows.append([
            row["name"],
            str(len(row["splits"])),
            *(f"{100 * m:.1f}±{100 * s:.1f}" for m, s in zip(row["mAP_mean"], row["mAP_std"])),
            f"{100 * row['average_mAP_mean']:.1f}±{100 * row['average_mAP_std']:.1f}",
        ])
    paper = summary["paper"]
    if paper is not None:  # the paper's row beside the standard splits only
        table.rules.add(len(table.rows))
        table.rows.append(["STALE, paper Table 1", "10", *("–" if v is None else f"{v:.1f}" for v in paper["mAP"]),
                           f"{paper['average_mAP']:.1f}"])
    return table


@app.command("zero-shot", cls=Command)
def zero_shot_command(
    dataset: str = typer.Option(
        ..., "--dataset", metavar="thumos14|activitynet13",
        help="The benchmark (with --unseen-file: whose preset to use, subsets, tIoUs and windows)."),
    setting: Optional[str] = typer.Option(
        None, "--setting", metavar="75_25|50_50", help="Seen % _ unseen % of the classes.", show_default="75_25"),
    unseen_file: Optional[Path] = typer.Option(
        None, "--unseen-file", help="Your own splits instead of the standard ones: one line per split, its unseen "
        "class names separated by commas; the seen classes are every other label of the training subset."),
    features: Path = typer.Option(..., "--features", help="Feature files of the dataset (from `stale extract-features`)."),
    annotations: Path = typer.Option(..., "--annotations", "-a", help="The dataset's ActivityNet-format annotations."),
    work_dir: Path = typer.Option(
        ..., "--work-dir", help="Checkpoints, predictions and results per split; rerun to resume."
    ),
    splits: Optional[str] = typer.Option(
        None, "--splits", help="Which splits, e.g. 0-9, 0,3 or 0-2 (own splits: numbered by line from 0).",
        show_default="all: the 10 standard ones, or every line of --unseen-file"),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Also run the training-free CLIP mode."),
    train_stale: bool = typer.Option(True, "--train/--no-train", help="Train and evaluate STALE (--no-train: baseline only)."),
    train_subset: Optional[str] = typer.Option(
        None, "--train-subset", help="Annotation subset to train on.",
        show_default="val (THUMOS14), training (ActivityNet)"),
    test_subset: Optional[str] = typer.Option(
        None, "--test-subset", help="Annotation subset to detect and evaluate on.",
        show_default="test (THUMOS14), validation (ActivityNet)"),
    tiou: Optional[str] = typer.Option(
        None, "--tiou", help="tIoU thresholds, as for stale evaluate.", show_default="the dataset's"),
    epochs: Optional[int] = typer.Option(
        None, "--epochs", help="Training epochs per split.", show_default=EPOCHS_DEFAULT),
    lr: Optional[float] = LrOption,
    batch_size: Optional[int] = BatchSizeOption,
    lr_prompt: Optional[float] = LrPromptOption,
    lr_text: Optional[float] = LrTextOption,
    dropout: Optional[float] = DropoutOption,
    seed: Optional[int] = SeedOption,
    num_snippets: Optional[int] = typer.Option(
        None, "--num-snippets", help="T, snippets per window.", show_default="the dataset preset's, 256 / 100"
    ),
    freeze_text_encoder: bool = FreezeTextOption,
    unseen_as_background: Optional[bool] = typer.Option(
        None, "--unseen-as-background/--unseen-left-out", help="How instances of a split's unseen classes count in "
        "training: background (strict open-vocabulary training) or left out of every loss term.",
        show_default="left out on the standard splits; background on --unseen-file splits, as actions nobody "
        "annotated are in a checkpoint trained on all your names"),
    prompt_init: str = PromptInitOption,
    clip_model: str = ClipModelOption,
    clip_weights: str = ClipWeightsOption,
    device: str = DeviceOption,
    progress: bool = ProgressOption,
) -> None:
    """Run the paper's zero-shot protocol and print its Table 1 row.

    For each split: train on the seen classes, detect the unseen classes on the test subset, evaluate; then print
    mean ± std over the splits, with the training-free baseline. Writes results.json and results.md into the
    work dir.

    With --unseen-file, the splits are yours: on your own annotated videos this tells whether a checkpoint trained
    on some of your names helps on the others, and which `stale detect --new-names` reading to use.

    Example: stale zero-shot --dataset thumos14 --features feats/ --annotations thumos14.json --work-dir zs/
    """
    from dataclasses import replace

    with user_errors():
        from stale_cli.evaluation.evaluate import parse_tious
        from stale_cli.evaluation.protocol import (
            ProtocolConfig,
            parse_splits,
            planned_outputs,
            read_unseen_file,
            row_notes,
            run_protocol,
        )
        from stale_cli.errors import InputError
        from stale_cli.features.clip_backbone import load_clip
        from stale_cli.guard import OutputGuard
        from stale_cli.model.config import ModelConfig

        check_training_options(epochs, lr, batch_size, seed, lr_prompt, lr_text, dropout)
        from stale_cli.model.checkpoint import MAX_SNIPPETS

        check_range("--num-snippets", num_snippets, 2, MAX_SNIPPETS)  # what a checkpoint may hold
        unseen_sets = None
        if unseen_file is not None:
            if setting is not None:
                raise InputError("--setting chooses among the standard splits; with --unseen-file the file's lines "
                                 "are the splits")
            unseen_sets = read_unseen_file(unseen_file)
        cfg = ProtocolConfig(
            dataset=dataset,
            setting=setting or "75_25",
            unseen_sets=unseen_sets,
            unseen_source=unseen_file.name if unseen_file is not None else "",
            train_subset=train_subset,
            test_subset=test_subset,
            tious=tuple(parse_tious(tiou)) if tiou else None,
            baseline=baseline,
            train=train_stale,
        )
        if splits is not None:  # numbered within the standard splits or the file's lines
            cfg = replace(cfg, splits=parse_splits(splits, cfg.num_splits))
        data_cfg = cfg.spec.data
        if num_snippets is not None:
            data_cfg = replace(data_cfg, num_snippets=num_snippets)
        overrides = {k: v for k, v in dict(epochs=epochs, lr=lr, lr_prompt=lr_prompt, lr_text=lr_text,
                                           batch_size=batch_size, seed=seed,
                                           ignore_unseen=None if unseen_as_background is None
                                           else not unseen_as_background).items()
                     if v is not None}
        train_cfg = replace(cfg.default_train_config(), **overrides)
        model_cfg = replace(ModelConfig(), freeze_text_encoder=freeze_text_encoder, context_init=prompt_init,
                            **({} if dropout is None else {"dropout": dropout}))
        guard = OutputGuard()  # before CLIP is loaded and anything runs
        guard.input(annotations, f"the annotations file {annotations}")
        if unseen_file is not None:
            guard.input(unseen_file, f"the unseen-classes file {unseen_file}")
        guard.input_if_file(clip_weights, f"the CLIP weights {clip_weights}")
        for path in planned_outputs(cfg, work_dir):
            guard.output(path, "--work-dir")
        dev = resolve_device(device)
        clip = load_clip(clip_model, clip_weights, device=dev)
        summary = run_protocol(
            cfg, features, annotations, work_dir, clip, model_cfg=model_cfg, data_cfg=data_cfg, train_cfg=train_cfg,
            device=dev, progress=show_progress(progress), report=info,
        )
        summary_table(summary).print(stdout)
        for note in row_notes(summary):
            stdout.print(note)
        wrote(work_dir / "results.json")
        wrote(work_dir / "results.md")
