"""``stale models``: the CLIP architectures open_clip knows, their pretrained tags, and which are cached here."""

from __future__ import annotations

import typer

from stale_cli.cli.app import Command, app, info, stdout, user_errors


def is_cached(model: str, tag: str, cache_dir=None) -> bool:
    """Whether the weights of (``model``, ``tag``) are in the Hugging Face cache (nothing is fetched)."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    hub = (open_clip.get_pretrained_cfg(model, tag) or {}).get("hf_hub", "")  # "org/repo/" or "org/repo/file"
    parts = hub.rstrip("/").split("/")
    if len(parts) < 2:
        return False
    repo_id, names = "/".join(parts[:2]), ["/".join(parts[2:])] if len(parts) > 2 else [
        "open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    return any(isinstance(try_to_load_from_cache(repo_id, name, cache_dir=cache_dir), str) for name in names)


@app.command("models", cls=Command)
def models_command(
    cached: bool = typer.Option(False, "--cached", help="Only the weights already downloaded (usable offline)."),
) -> None:
    """List the CLIP architectures (--clip-model) and pretrained tags (--clip-weights) open_clip knows.

    Tags whose weights are cached locally are marked with *.

    Example: stale models --cached
    """
    with user_errors():
        import open_clip

        by_model: dict = {}
        for model, tag in open_clip.list_pretrained():
            by_model.setdefault(model, []).append((tag, is_cached(model, tag)))
        shown = 0
        for model, tags in by_model.items():
            tags = [(t, c) for t, c in tags if c or not cached]
            if tags:
                shown += 1
                stdout.print(f"{model:<32} " + " ".join(t + ("*" if c else "") for t, c in tags), highlight=False)
        info(f"{shown} architecture(s); * = cached locally (Hugging Face cache); stale's default: ViT-B-16 openai")
