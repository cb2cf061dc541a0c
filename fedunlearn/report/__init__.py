"""Plots, report.md and Markdown tables drawn from a results folder's saved files (never from live objects)."""

from fedunlearn.report.plots import draw_all
from fedunlearn.report.report import read_summary, write_report
from fedunlearn.report.table import markdown_table

__all__ = ["draw_all", "markdown_table", "read_summary", "write_report"]
