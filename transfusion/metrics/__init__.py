"""Metrics on inputs already made: captions against references, image sets against image sets,
and the judges (``judges.py``) that read generated images and captions for a dataset."""
