"""Phases of an experiment, run inside a :class:`~fedunlearn.flower.runtime.Federation`."""
