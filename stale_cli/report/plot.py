"""The score plot of ``detect --plot`` (matplotlib, an optional dependency)."""

from __future__ import annotations

import os
from pathlib import Path

from stale_cli.detection.detections import VideoDetections
from stale_cli.errors import InputError
from stale_cli.fileio import atomic_path


def require_matplotlib() -> None:
    """Fail early, before any work, when ``--plot`` is asked for without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install 'stale-cli[plot]' (or pip install matplotlib)") from None


PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".eps", ".ps")  # matplotlib's


def check_plot_format(plot: str | os.PathLike) -> None:
    """A ``--plot`` suffix matplotlib cannot write -> InputError (before any work, not a traceback after it)."""
    suffix = Path(plot).suffix or ".png"
    if suffix.lower() not in PLOT_SUFFIXES:
        raise InputError(f"--plot {plot}: matplotlib cannot write {suffix!r} images; use one of "
                         f"{', '.join(PLOT_SUFFIXES)}")


def plot_paths(plot: str | os.PathLike, video_ids: list[str]) -> dict[str, Path]:
    """One video -> ``plot`` itself; several -> ``<stem>_<video_id><suffix>`` beside it."""
    plot = Path(plot)
    suffix = plot.suffix or ".png"
    if len(video_ids) == 1:
        return {video_ids[0]: plot if plot.suffix else plot.with_suffix(suffix)}
    return {vid: plot.with_name(f"{plot.stem}_{vid}{suffix}") for vid in video_ids}


def plot_detections(video: VideoDetections, path: str | os.PathLike) -> None:
    """Per-class score curves over time (top panel) and the detected segments as bars (bottom panel), one row
    and one colour per class of the video."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    classes = video.classes
    fig, (ax_s, ax_d) = plt.subplots(
        2, 1, figsize=(12, 2.5 + 0.35 * len(classes)), sharex=True, gridspec_kw={"height_ratios": [3, 1 + 0.2 * len(classes)]}
    )
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    if video.times is not None and video.scores is not None:
        for k, name in enumerate(classes):
            ax_s.plot(video.times, video.scores[:, k], color=colours(k % colours.N), lw=1.2, label=name)
    ax_s.set_ylabel("class probability")
    ax_s.set_ylim(0, 1.02)
    ax_s.legend(loc="upper right", fontsize="small", ncol=min(len(classes), 4))
    ax_s.set_title(f"{video.video_id}: {video.extra.get('mode', '')} detections")
    for s in video.segments:
        k = s.class_index
        ax_d.barh(k, s.end - s.start, left=s.start, height=0.8, color=colours(k % colours.N), alpha=0.3 + 0.7 * s.score)
    ax_d.set_yticks(range(len(classes)), classes, fontsize="small")
    ax_d.set_ylim(-0.6, len(classes) - 0.4)
    ax_d.invert_yaxis()
    ax_d.set_xlim(0, max(video.duration, 1e-3))
    ax_d.set_xlabel("seconds")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=100)
    finally:
        plt.close(fig)
