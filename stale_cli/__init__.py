"""stale: zero-shot temporal action detection with STALE (Nag et al., ECCV 2022)."""

__version__ = "0.3.0"

CLIP_WEIGHTS_ENV = "STALE_CLIP_WEIGHTS"  # environment variable naming the CLIP weights (tag or file)
