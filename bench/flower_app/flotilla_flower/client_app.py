"""The ClientApp: Flotilla's data loading and local training for the site in node-config."""

from __future__ import annotations

import functools

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flotilla.api import FederatedJob
from flotilla.data import ImageShape, load_site_data, split_train_holdout
from flotilla.fl.learning import Samples, learning_for
from flotilla.ml.training import TrainingConfig
from flotilla_flower.shared import empty_model, job_at

torch.set_num_threads(1)  # as Flotilla's clients (`--threads 1`)
app = ClientApp()


@functools.cache
def site_samples(job_path: str, site: str) -> Samples:
    job = job_at(job_path)
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


@app.train()
def train(msg: Message, context: Context) -> Message:
    job_path = str(context.run_config["job"])
    job = job_at(job_path)
    site = str(context.node_config["site"])
    model = empty_model(job)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict(), assign=True)
    round_number = int(msg.content["config"]["server-round"])
    learning = learning_for(job.spec.task, num_classes=len(job.spec.labels))
    result = learning.train(
        model,
        site_samples(job_path, site),
        config=training_config(job),
        seed=job.spec.seed * 100_003 + round_number,  # Flotilla's per-round seed
        device=torch.device("cpu"),
        global_weights=None,
    )
    metrics = MetricRecord({"num-examples": result.examples, "train-seconds": result.seconds})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)
