"""The bench's jobs and models: FederatedJob YAML written for a model, a client count and data.

Models: the digits CNN (`cnn`, 38,282 parameters) and synthetic MLPs of ~10M, ~50M and
~600M float32 parameters (`10m`, `50m`, `600m`: 2.4 GB, past every 2 GiB limit a wire,
a checkpoint or a log could have; `bench_models.deep_mlp`) whose local work is one SGD
step on one example (a pass over the weights, little arithmetic), so the framework
dominates the round.

Transport: plain HTTP unless `tls`; with `tls` the spec keeps the product's default
(`security.tls.mode: operator`), and the bench serves HTTPS as `flotilla run` does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from bench_models import parameter_count

# (width, hidden layers) of the bench MLP; None: the built-in digits CNN.
MODELS: dict[str, tuple[int, int] | None] = {
    "cnn": None,
    "10m": (1024, 10),
    "50m": (2048, 12),
    "600m": (8192, 9),  # 604.67M parameters, 2.42 GB of float32
}
CNN_PARAMETERS = 38_282
BENCH_DIR = Path(__file__).resolve().parent


def model_parameters(model: str) -> int:
    shape = MODELS[model]
    return CNN_PARAMETERS if shape is None else parameter_count(*shape)


def model_env(model: str) -> dict[str, str]:
    """What every process of a run needs to build the model: bench/ importable, its shape."""
    width, depth = MODELS[model] or (0, 0)
    path = f"{BENCH_DIR}:{os.environ.get('PYTHONPATH', '')}"
    return {
        "PYTHONPATH": path,
        "FLOTILLA_BENCH_WIDTH": str(width),
        "FLOTILLA_BENCH_DEPTH": str(depth),
    }


def overhead_job(
    *,
    root: Path,
    data: Path,
    model: str,
    clients: int,
    rounds: int,
    tls: bool = False,
    receive_buffers: int | None = None,
) -> Path:
    """N sites reading the same export; one SGD step of local work. `receive_buffers`:
    spec.limits.receiveBuffers (None: the default)."""
    synthetic = MODELS[model] is not None
    spec: dict[str, Any] = {
        "rounds": rounds,
        "labels": [str(d) for d in range(10)],
        "model": {"entrypoint": "bench_models:deep_mlp"} if synthetic else {"name": "cnn-small"},
        "sites": [
            {"name": f"site-{i:02d}", "data": {"cvatExport": {"path": str(data / "site")}}}
            for i in range(clients)
        ],
        "evaluation": {"federated": False},
        "clients": {"minClients": clients, "roundDeadlineSeconds": 900, "joinGraceSeconds": 900},
        "training": {
            "localEpochs": 1,
            "batchSize": 1 if synthetic else 64,
            "learningRate": 0.001,
            "maxSeconds": 0.001,
            "validationFraction": 0,
        },
        "strategy": {"name": "fedavg"},
    }
    spec["model"]["input"] = {"channels": 1, "height": 8, "width": 8}
    if receive_buffers is not None:
        spec["limits"] = {"receiveBuffers": receive_buffers}
    transport = "tls" if tls else "plain"
    return write(root / f"overhead-{model}-{clients}-{transport}.yaml", spec, tls=tls)


def digits_job(
    *, root: Path, data: Path, rounds: int, sites: list[str], compression: dict[str, Any] | None
) -> Path:
    """examples/digits.yaml with absolute paths, every site in every round, central scores only."""
    spec = yaml.safe_load((BENCH_DIR.parent / "examples" / "digits.yaml").read_text())["spec"]
    spec["rounds"] = rounds
    spec["sites"] = [{"name": s, "data": {"cvatExport": {"path": str(data / s)}}} for s in sites]
    spec["evaluation"] = {
        "federated": False,
        "testData": {"cvatExport": {"path": str(data / "test")}},
    }
    spec["clients"] = {
        "minClients": len(sites),
        "roundDeadlineSeconds": 300,
        "joinGraceSeconds": 300,
    }
    if compression:
        spec["compression"] = compression
    name = "digits" + "".join(f"-{v}" for v in (compression or {}).values())
    return write(root / f"{name}.yaml", spec)


def write(path: Path, spec: dict[str, Any], *, tls: bool = False) -> Path:
    # Plain HTTP on loopback unless asked, as Flower runs here (--insecure): the same wire
    # work for both. With TLS, the spec's default (operator mode) stands.
    if not tls:
        spec = {**spec, "security": {"tls": {"mode": "disabled"}}}
    document = {
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": "bench"},
        "spec": spec,
    }
    path.write_text(yaml.safe_dump(document))
    return path
