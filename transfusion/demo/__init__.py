"""A web demo of one checkpoint: ``transfusion serve RUN`` (needs ``pip install -e ".[demo]"``).

One page (``page.html``) for text to image, image to text, interleaved generation and editing,
over a small JSON API (``app.py``); requests are checked against ``jobs.Limits`` and served one
at a time from a queue (``jobs.py``). Binds 127.0.0.1 unless told otherwise, and answers only
its own Host names and JSON POSTs (docs/security.md).
"""
