"""Evaluation, the fourth stage: ``stale evaluate`` on a predictions file (``evaluate.py``, with the metric of
:mod:`stale_cli.metric`) and the paper's zero-shot protocol over the ten splits (``protocol.py``)."""
