"""Features, the pipeline's first stage: videos decoded (``video/``) and encoded by CLIP (``clip_backbone.py``)
into feature files with their sidecars (``extract/``)."""
