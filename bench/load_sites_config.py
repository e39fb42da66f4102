"""What the load_sites modules share: units, the bench's models and their sizes, one run's
settings and the open-files limit. Its own module so that imports go one way only: the driver
(load_sites.py) imports the sampler (load_sites_watch.py) and the report (load_sites_report.py,
which imports the sampler for its type); they and the simulated sites (load_sites_worker.py,
started as a script, never imported by the driver) import this, and this imports none of them.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path

from bench_models import parameter_count

GIB, MIB, KIB = 1 << 30, 1 << 20, 1 << 10
BENCH_DIR = Path(__file__).resolve().parent
# (width, hidden layers) of bench_models.deep_mlp; None: the digits CNN on 8x8 images.
MODELS: dict[str, tuple[int, int] | None] = {"cnn": None, "1m": (496, 4)}
CNN_PARAMETERS = 38_282


def model_parameters(model: str) -> int:
    shape = MODELS[model]
    return CNN_PARAMETERS if shape is None else parameter_count(*shape)


def raise_fd_limit() -> int:
    """Soft limit on open files up to the hard one (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass(frozen=True)
class RunConfig:
    """One run: a model, a site count, and how the driver runs them."""

    model: str
    clients: int
    rounds: int
    processes: int
    tls: bool
    train_seconds: float
    ramp_seconds: float
    timeout: float
    deadline: float
    profile: Path | None = None
    pin: bool = False  # the aggregator alone on core 0, the generator on the others
    timeline: bool = False  # sample the aggregator's event loop every 5 ms (load_sites_timeline)
