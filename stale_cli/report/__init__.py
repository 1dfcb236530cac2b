"""Report, the fifth stage: detections shown to a person, as a score plot (``plot.py``) and the HTML report of
``detect --html`` (``report.py``, its CSS and JavaScript in ``assets/``)."""
