"""Flotilla: federated training of vision models on data that never leaves its site."""

__version__ = "0.1.0"
