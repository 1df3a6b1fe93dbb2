"""Measurement scripts, not tests: ``models.py`` (teacher vs DONUT-hole students) and ``pipeline.py``."""
