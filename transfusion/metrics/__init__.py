"""Metrics on inputs already made: captions against references, image sets against image sets."""
