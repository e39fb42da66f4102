"""The client script (NVFlare Client API): Flotilla's data loading and local training.

Run by NVFlare's ScriptRunner on each site (the site's name is NVFlare's client name);
`--job` is the FederatedJob YAML the bench wrote. Same work as Flotilla's client and the
Flower App's ClientApp: Flotilla's CVAT-export reader, train/hold-out split and
`learning.train` with Flotilla's per-round seed, one torch thread.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nvflare.client as flare
import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from flotilla.api import FederatedJob, load_job
from flotilla.data import ImageShape, load_site_data, split_train_holdout
from flotilla.fl.learning import Samples, learning_for
from flotilla.fl.modelstate import build_job_model
from flotilla.ml.training import TrainingConfig


def site_samples(job: FederatedJob, site: str) -> Samples:
    spec = job.spec
    shape = spec.model.input
    data = load_site_data(
        site=site,
        source=job.site_data(site),
        task=spec.task,
        labels=spec.labels,
        shape=ImageShape(channels=shape.channels, height=shape.height, width=shape.width),
    )
    train, _ = split_train_holdout(
        data.samples, validation_fraction=spec.training.validation_fraction, seed=spec.seed
    )
    return train


def training_config(job: FederatedJob) -> TrainingConfig:
    t = job.spec.training
    return TrainingConfig(
        local_epochs=t.local_epochs,
        batch_size=t.batch_size,
        optimizer=t.optimizer,
        learning_rate=t.learning_rate,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        max_seconds=t.max_seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as Flotilla's clients (`--threads 1`)
    job = load_job(Path(args.job))
    flare.init()
    site = flare.get_site_name()
    samples = site_samples(job, site)
    learning = learning_for(job.spec.task, num_classes=len(job.spec.labels))
    config = training_config(job)
    with torch.device("meta"):  # weights come from the server's message, not an init
        model = build_job_model(job)
    while flare.is_running():
        received = flare.receive()
        if received is None:
            break
        weights = {k: torch.as_tensor(v) for k, v in received.params.items()}
        model.load_state_dict(weights, assign=True)
        round_number = received.current_round + 1  # NVFlare counts from 0, Flotilla from 1
        result = learning.train(
            model,
            samples,
            config=config,
            seed=job.spec.seed * 100_003 + round_number,  # Flotilla's per-round seed
            device=torch.device("cpu"),
            global_weights=None,
        )
        flare.send(
            FLModel(
                params={k: v.detach() for k, v in model.state_dict().items()},
                params_type=ParamsType.FULL,
                metrics={"train-seconds": float(result.seconds)},
                meta={"NUM_STEPS_CURRENT_ROUND": result.examples},  # FedAvg's weight: examples
            )
        )


if __name__ == "__main__":
    main()
