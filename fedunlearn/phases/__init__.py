"""Phases of an experiment, run inside a :class:`~fedunlearn.federation.Federation`."""
