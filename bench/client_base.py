"""A client's base memory: the process as `flotilla client` has it, less its model.

Python, torch (one thread), Flotilla's client modules, the site's data read from its
CVAT export, and torch's training machinery warmed up by one step of a tiny model (the
first optimiser step loads ~70 MB of torch's code, whatever the model's size): what every
client process holds whatever the model. Prints peak RSS in KiB.

    python bench/client_base.py JOB.yaml SITE
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import flotilla.fl.client.loop  # noqa: F401  (what the client process imports)
from flotilla.api import load_job
from flotilla.data import ImageShape, load_site_data
from flotilla.fl.client.memory import return_large_blocks_to_the_os
from flotilla.ml.training import TrainingConfig, train_local


def main() -> None:
    job_path, site = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    return_large_blocks_to_the_os()  # as `flotilla client` does by default
    spec = load_job(job_path).spec
    shape = spec.model.input
    data = load_site_data(
        site=site,
        source=load_job(job_path).site_data(site),
        task=spec.task,
        labels=spec.labels,
        shape=ImageShape(channels=shape.channels, height=shape.height, width=shape.width),
    )
    pixels = shape.channels * shape.height * shape.width
    tiny = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(pixels, len(spec.labels)))
    training = spec.training
    config = TrainingConfig(
        local_epochs=1,
        batch_size=training.batch_size,
        optimizer=training.optimizer,
        learning_rate=training.learning_rate,
        momentum=training.momentum,
        max_seconds=0.001,
    )
    samples = data.samples
    train_local(
        tiny, samples.images, samples.labels, config=config, seed=0, device=torch.device("cpu")
    )
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            print(int(line.split()[1]))


if __name__ == "__main__":
    main()
