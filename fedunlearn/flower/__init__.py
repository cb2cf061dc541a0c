"""Everything that faces Flower: the ClientApp, the ServerApp for ``flwr run``, the runtime that
starts a federation, and :mod:`~fedunlearn.flower.compat`, the one module touching Flower internals."""
