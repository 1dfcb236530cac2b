"""Detection, the third stage: feature files to ranked segments in seconds, with a trained checkpoint or CLIP
alone (``detect.py``, ``clipmode.py``), reduced for a person (``reading.py``), written as JSON / CSV / SRT
(``outputs.py``), with the journal that resumes a batch (``resume.py``)."""
