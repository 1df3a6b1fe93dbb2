"""DONUT-hole: sparse DONUT students for reading scanned logistics documents at scale."""

__version__ = "0.1.0"
