"""What the ServerApp and ClientApp share: the job, and the model without a second init."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from flotilla.api import FederatedJob, load_job
from flotilla.fl.modelstate import build_job_model


@functools.cache
def job_at(path: str) -> FederatedJob:
    return load_job(Path(path))


def empty_model(job: FederatedJob) -> torch.nn.Module:
    """The job's architecture on the meta device: weights come from the message, not an init."""
    with torch.device("meta"):
        return build_job_model(job)
