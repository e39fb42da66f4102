"""Nothing stops at 2 GiB: a 2.42 GB float32 model through the wire codec, the checkpoint
and MLflow, in one process, each step checked value for value.

The tensor map is the `600m` bench model's (604.67M float32 parameters, 2.42 GB; built on
torch's meta device for its shapes, then filled at random), laid out as the job's wire
layout (`flotilla.fl.wire`):

- wire: the safetensors buffer fed to the aggregator's receiver (`SafetensorsReceiver`)
  in 1 MiB pieces, as a socket delivers an upload, into a second buffer;
- checkpoint: `CheckpointStore.save` (the served buffer written as is, fsynced), then
  `load` into a fresh buffer, as a restarted aggregator resumes;
- MLflow weights: `MlflowBackend.register_model` as the job's end does it (the weights as
  one safetensors file, `log_artifact`; the served module is a stand-in, nn.Identity:
  torch.export of the real network is not what is tested), then `download_weights` and
  `read_weights`, as a warm start reads them;
- MLflow checkpoint: the checkpoint's folder through `log_artifacts` and
  `download_checkpoint`, as the exporter uploads and a resume fetches it.

MLflow here is a local store (SQLite, artifacts on disk beside it) unless
`--tracking-uri` names another; the path through MLflow's client is the same.

    .venv/bin/python bench/past_2gib.py [--model 600m] [--tracking-uri URI]

Not part of the test suite: it needs ~10 GB of memory and ~10 GB of disk.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobs import model_env, model_parameters
from procs import status_kib

from flotilla.fl.wire import Layout, model_layout

GIB, MIB = 1 << 30, 1 << 20
LABELS = [str(d) for d in range(10)]


def layout_for(model: str) -> Layout:
    """The wire layout of a bench model, from its shapes alone (no weights built)."""
    os.environ.update(model_env(model))
    from bench_models import deep_mlp

    with torch.device("meta"):
        network = deep_mlp(num_classes=10, input_shape=(1, 8, 8))
    return model_layout(network.state_dict())


def same(layout: Layout, a: Any, b: Any, **where: Any) -> bool:
    """Every tensor of buffer `b` (at `where`'s offsets) equals buffer `a`'s."""
    left, right = layout.views(a), layout.views(b, **where)
    return all(torch.equal(left[name], right[name]) for name in left)


def step(name: str, action: Callable[[], tuple[int, str]]) -> None:
    """Run one step; print its row: seconds, bytes moved, the check, the process's peak."""
    started = time.perf_counter()
    moved, result = action()
    seconds = time.perf_counter() - started
    peak = status_kib(os.getpid(), "VmHWM") * 1024
    print(
        f"| {name} | {seconds:.1f} s | {moved / 1e9:.2f} GB | {result} | {peak / GIB:.2f} GiB |",
        flush=True,
    )


def wire(layout: Layout, sent: bytearray) -> tuple[int, str]:
    from flotilla.fl.receive import SafetensorsReceiver

    received = layout.allocate()
    receiver = SafetensorsReceiver(layout, memoryview(received)[len(layout.header) :])
    view = memoryview(sent)
    for start in range(0, len(view), MIB):
        receiver.feed(view[start : start + MIB])
    offsets = receiver.finish()
    ok = same(layout, sent, received, offsets=offsets)
    return receiver.wire_bytes, "equal" if ok else "**DIFFERENT**"


def checkpoint(layout: Layout, sent: bytearray, state_dir: Path) -> tuple[int, str]:
    from flotilla.fl.aggregator.checkpoint import CheckpointStore, Snapshot

    store = CheckpointStore(state_dir)
    state: dict[str, Any] = {"history": [], "evaluations": {}, "identity": {}}
    started = time.perf_counter()
    folder = store.save(Snapshot(completed_rounds=1, model=sent, optimizer_state={}, state=state))
    saved = time.perf_counter()
    loaded = store.load(layout)
    read = time.perf_counter()
    assert loaded is not None, "the checkpoint just written was not found"
    size = (folder / "model.safetensors").stat().st_size
    ok = "equal" if same(layout, sent, loaded[1]) else "**DIFFERENT**"
    return 2 * size, f"{ok} (save {saved - started:.1f} s, load {read - saved:.1f} s)"


def mlflow_weights(
    layout: Layout, sent: bytearray, backend: Any, run_id: str, scratch: Path
) -> tuple[int, str]:
    from torch import nn

    from flotilla.tracking.served_model import ServedModel
    from flotilla.tracking.weights import read_weights

    views = layout.views(sent)
    model = ServedModel(module=nn.Identity(), input_shape=(1, 8, 8), labels=LABELS, weights=views)
    backend.register_model(run_id, model, name="past-2gib", alias="candidate", round_number=2)
    path = backend.download_weights(run_id, 2, scratch / "downloaded")
    assert path is not None, "the logged weights are not in the run"
    logged = read_weights(path)
    ok = logged.labels == LABELS and all(
        torch.equal(views[name], logged.tensors[name]) for name in views
    )
    return 2 * path.stat().st_size, "equal" if ok else "**DIFFERENT**"


def mlflow_checkpoint(backend: Any, run_id: str, state_dir: Path, scratch: Path) -> tuple[int, str]:
    folder = state_dir / "checkpoints" / "round-000001"
    backend.log_artifacts(run_id, folder, "checkpoints/round-000001")
    fetched = backend.download_checkpoint(run_id, 1, scratch / "fetched")
    ok = filecmp.cmp(folder / "model.safetensors", fetched / "model.safetensors", shallow=False)
    size = (folder / "model.safetensors").stat().st_size
    return 2 * size, "equal (byte for byte)" if ok else "**DIFFERENT**"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="600m", help="a bench model (jobs.MODELS)")
    parser.add_argument("--tracking-uri", help="default: a SQLite store in a temporary folder")
    args = parser.parse_args()
    from flotilla.tracking.backend import MlflowBackend

    layout = layout_for(args.model)
    print(
        f"{args.model}: {model_parameters(args.model) / 1e6:.2f}M parameters, "
        f"{layout.total_size / 1e9:.2f} GB ({layout.total_size / GIB:.2f} GiB) on the wire; "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    print("| step | seconds | bytes written + read | check | process peak RSS |")
    print("| --- | --- | --- | --- | --- |")
    sent = layout.allocate()
    step("fill the model buffer", lambda: _fill(layout, sent))
    step("wire: receiver, 1 MiB pieces", lambda: wire(layout, sent))
    with tempfile.TemporaryDirectory(prefix="flotilla-2gib-") as folder:
        scratch = Path(folder)
        step("checkpoint: save + load", lambda: checkpoint(layout, sent, scratch / "state"))
        uri = args.tracking_uri or f"sqlite:///{scratch / 'mlflow.db'}"
        backend = MlflowBackend(uri)
        _, run_id = backend.open_run(
            experiment="past-2gib", run_id=None, run_key="past-2gib", run_name="past-2gib", tags={}
        )
        step(
            "MLflow weights: register_model + download_weights + read_weights",
            lambda: mlflow_weights(layout, sent, backend, run_id, scratch),
        )
        step(
            "MLflow checkpoint: log_artifacts + download_checkpoint",
            lambda: mlflow_checkpoint(backend, run_id, scratch / "state", scratch),
        )


def _fill(layout: Layout, buffer: bytearray) -> tuple[int, str]:
    generator = torch.Generator().manual_seed(0)
    for view in layout.views(buffer).values():
        view.uniform_(-1, 1, generator=generator)
    return layout.data_size, "-"


if __name__ == "__main__":
    main()
