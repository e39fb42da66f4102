"""Flotilla's bench job as an NVIDIA FLARE job: the same model, data and local training code."""
