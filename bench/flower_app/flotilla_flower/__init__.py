"""Flotilla's bench job as a Flower App: the same model, data and local training code."""
