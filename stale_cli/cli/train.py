"""``stale train``: train STALE on feature files and ActivityNet-format annotations."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from stale_cli.cli.app import (
    ClassesFileOption,
    ClassesOption,
    ClipModelOption,
    ClipWeightsOption,
    Command,
    DeviceOption,
    ProgressOption,
    MAX_BATCH,
    MAX_COUNT,
    MAX_SEED,
    OutputOption,
    app,
    check_range,
    read_class_names,
    resolve_device,
    show_progress,
    stdout,
    user_errors,
    warning,
)


# Training options `train` and `zero-shot` share, defined once.
LrPromptOption = typer.Option(
    None, "--lr-prompt", help="Learning rate of the prompt context and background embedding.", show_default="1e-3")
LrTextOption = typer.Option(
    None, "--lr-text", help="Learning rate of CLIP's text tower when fine-tuned.", show_default="1e-6")
DropoutOption = typer.Option(None, "--dropout", help="Dropout in the head's transformer layers.", show_default="0.1")
LrOption = typer.Option(
    None, "--lr", help="AdamW learning rate of the head's layers (the paper's single rate: 1e-5 THUMOS14, 1e-4 "
    "ActivityNet).", show_default="5e-4")
BatchSizeOption = typer.Option(None, "--batch-size", help="Windows per training step.", show_default="16")
SeedOption = typer.Option(None, "--seed", help="Random seed of training.", show_default="0")
EPOCHS_DEFAULT = "15, or more on a small training set so that training takes at least 240 steps"
FreezeTextOption = typer.Option(
    True, "--freeze-text-encoder/--tune-text-encoder", help="Keep CLIP's text encoder fixed (the prompt "
    "context still learns), or fine-tune it as the paper does.")
UnseenAsBackgroundOption = typer.Option(
    False, "--unseen-as-background", help="Call instances of classes outside the training names background "
    "(strict open-vocabulary training); without it they are left out of every loss term.")
PromptInitOption = typer.Option(
    "a video of a person", "--prompt-init", help="Hand-made prompt the learned context starts from; '' for the "
    "paper's 16 random vectors.")


def check_training_options(epochs, lr, batch_size, seed, lr_prompt=None, lr_text=None, dropout=None) -> None:
    """Bounds of the training options `train` and `zero-shot` share (None: not given)."""
    from stale_cli.errors import InputError

    check_range("--epochs", epochs, 1, MAX_COUNT)
    check_range("--batch-size", batch_size, 1, MAX_BATCH)
    check_range("--seed", seed, 0, MAX_SEED)
    for flag, value in (("--lr", lr), ("--lr-prompt", lr_prompt), ("--lr-text", lr_text)):
        if value is not None and not 0 < value < 1:
            raise InputError(f"{flag} must be in (0, 1), got {value}")
    if dropout is not None and not 0 <= dropout < 1:
        raise InputError(f"--dropout must be in [0, 1), got {dropout}")


@app.command("train", cls=Command)
def train_command(
    features: Path = typer.Option(..., "--features", help="Directory of <video_id>.npy + .json from extract-features."),
    annotations: Path = typer.Option(..., "--annotations", help="ActivityNet-format annotation JSON."),
    output: Path = OutputOption("Checkpoint of the best epoch (the last goes to <output>.last.pt).", required=True,
                                metavar="FILE"),
    split: Optional[str] = typer.Option(
        None, "--split", help="Zero-shot split, e.g. thumos14/75_25/3: train on its seen classes only."),
    classes: Optional[str] = ClassesOption,
    classes_file: Optional[Path] = ClassesFileOption,
    subset: Optional[str] = typer.Option(
        None, "--subset", help="Annotation subset to train on.",
        show_default="training (or train) if present, THUMOS14: val"),
    preset: str = typer.Option("thumos14", "--preset", metavar="thumos14|activitynet13", help="thumos14 (windows "
                               "of 256 snippets) | activitynet13 (whole video resized to 100 snippets; also "
                               "spelled activitynet)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs.", show_default=EPOCHS_DEFAULT),
    lr: Optional[float] = LrOption,
    lr_prompt: Optional[float] = LrPromptOption,
    lr_text: Optional[float] = LrTextOption,
    batch_size: Optional[int] = BatchSizeOption,
    window_jitter: Optional[float] = typer.Option(
        None, "--window-jitter", help="Move each training window by up to this fraction of the stride (0-1, "
        "window mode).", show_default="0.5"),
    seed: Optional[int] = SeedOption,
    val_fraction: Optional[float] = typer.Option(
        None, "--val-fraction", help="Share of training videos held out to pick the best epoch (0: train "
        "on all, keep the last epoch).", show_default="0"),
    balance_classes: Optional[bool] = typer.Option(
        None, "--balance-classes/--no-balance-classes", help="Draw windows of rare classes more often (repeat "
        "factor sampling).", show_default="on"),
    dropout: Optional[float] = DropoutOption,
    freeze_text_encoder: bool = FreezeTextOption,
    unseen_as_background: bool = UnseenAsBackgroundOption,
    prompt_init: str = PromptInitOption,
    clip_model: str = ClipModelOption,
    clip_weights: str = ClipWeightsOption,
    device: str = DeviceOption,
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="Continue from this checkpoint up to --epochs. Rerunning the same command does this "
        "by itself from <output>.last.pt."),
    fresh: bool = typer.Option(
        False, "--fresh", "--restart", help="Start over even if <output>.last.pt holds a run (it is replaced)."),
    progress: bool = ProgressOption,
) -> None:
    """Train the STALE head (and CLIP's prompted text encoder) on features of annotated videos.

    Rerunning the same command resumes from <output>.last.pt (an interrupted run goes on where it stopped); a rerun
    with other settings is refused: pass --fresh to start over, or another --output. Under
    `torchrun --nproc-per-node N stale train ...` it trains on N GPUs (or N CPU processes).

    Example: stale train --features feats/ --annotations thumos14.json --split thumos14/75_25/0 -o th75_0.pt
    """
    out = output
    with user_errors():
        from stale_cli.errors import InputError
        from stale_cli.guard import OutputGuard
        from stale_cli.model import datasets
        from stale_cli.model.checkpoint import check_checkpoint_path
        from stale_cli.model.config import ModelConfig
        from stale_cli.model.data.annotations import load_annotations
        from stale_cli.model.train import default_training_subset, last_path_for, select_classes, train

        spec = datasets.get(preset, "--preset")
        data_cfg = spec.data
        if window_jitter is not None:
            if not 0 <= window_jitter <= 1:
                raise InputError(f"--window-jitter must be in [0, 1], got {window_jitter}")
            data_cfg = dataclasses.replace(data_cfg, jitter=window_jitter)
        overrides = {k: v for k, v in dict(epochs=epochs, lr=lr, lr_prompt=lr_prompt, lr_text=lr_text,
                                           batch_size=batch_size, seed=seed, val_fraction=val_fraction,
                                           balance_classes=balance_classes,
                                           ignore_unseen=False if unseen_as_background else None).items()
                     if v is not None}
        check_training_options(epochs, lr, batch_size, seed, lr_prompt, lr_text, dropout)
        if val_fraction is not None and not 0 <= val_fraction < 1:
            raise InputError(f"--val-fraction must be in [0, 1), got {val_fraction}")
        train_cfg = dataclasses.replace(spec.train, **overrides)
        # Before CLIP is loaded and anything is trained. --resume is not declared: it is read whole before the first
        # save, and continuing into the <output>.last.pt it came from is the usual resume.
        guard = OutputGuard()
        guard.input(annotations, f"the annotations file {annotations}")
        guard.input(classes_file, f"the classes file {classes_file}")
        guard.input_if_file(clip_weights, f"the CLIP weights {clip_weights}")
        guard.output(out, "--output", "the best checkpoint")
        guard.output(last_path_for(out), "--output", "the last checkpoint")  # <output>.last.pt, written every epoch
        check_checkpoint_path(out)
        ann = load_annotations(annotations)
        names = read_class_names(classes, classes_file, required=False)
        class_names = select_classes(ann, split, names)
        ann = ann.select_subset(subset if subset is not None else default_training_subset(ann))
        dev = resolve_device(device)
        if resume is not None and fresh:
            raise InputError("give either --resume PATH (go on) or --fresh (start over), not both")
        rerun = resume is None and not fresh and last_path_for(out).is_file()
        clip, recorded = None, "random"
        if rerun:  # the same command again: resume from <output>.last.pt if its settings are these (train() checks)
            from stale_cli.features.clip_backbone import weights_label

            resume, recorded = last_path_for(out), weights_label(clip_model, clip_weights)
        elif resume is None:
            from stale_cli.features.clip_backbone import load_clip

            backbone = load_clip(clip_model, clip_weights, "cpu")
            clip, recorded = backbone.model, backbone.weights
        model_cfg = ModelConfig(freeze_text_encoder=freeze_text_encoder, context_init=prompt_init)
        if dropout is not None:
            model_cfg = dataclasses.replace(model_cfg, dropout=dropout)
        result = train(
            features, ann, class_names, out, clip, clip_model, recorded,
            model_cfg=model_cfg, data_cfg=data_cfg, train_cfg=train_cfg,
            device=dev, resume=resume, progress=show_progress(progress), rerun=rerun, fresh=fresh, dataset=spec.name,
        )
        if result.missing_videos:
            warning(f"{result.missing_videos} annotated video(s) had no features and were skipped")
        best = next((h for h in result.history if h["epoch"] == result.best_epoch), None)
        score = ""
        if best is not None and best.get("val_map50") is not None:
            score = f", held-out mAP@0.5 {100 * best['val_map50']:.1f}% on {result.val_videos} video(s)"
        stdout.print(f"best epoch {result.best_epoch} ({result.score_name}{score}) -> {result.best_path}",
                     highlight=False)
        stdout.print(f"last epoch -> {result.last_path}", highlight=False)
