"""The model, the pipeline's second stage: STALE (paper §3.2), its losses and post-processing (§3.3), the training
data (``data/``) and per-dataset presets (``datasets.py``), training and self-describing checkpoints. Import the
submodules; nothing is built at import time."""
