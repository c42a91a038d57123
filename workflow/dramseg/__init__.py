"""Weakly supervised COVID-19 lesion segmentation with dense regression activation maps."""

__version__ = "0.1.0"
