"""Plots and report.md drawn from a comparison folder's saved results (never from live objects)."""

from fedunlearn.report.plots import draw_all
from fedunlearn.report.report import write_report

__all__ = ["draw_all", "write_report"]
