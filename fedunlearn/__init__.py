"""fedunlearn: a federated unlearning simulator on Flower (ServerApp/ClientApp, Ray, PyTorch)."""

__version__ = "0.1.0"
