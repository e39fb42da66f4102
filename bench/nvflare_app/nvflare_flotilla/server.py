"""The server side: NVFlare's FedAvg controller, timing each round and scoring the test data.

A round here is what Flotilla's round record measures (and the Flower App's): from sending
the train task to the aggregated model (the end of `update_model`). The clients report
their training seconds in the result's metrics; the bench subtracts the slowest. After
each round the global model is scored on the job's central test data with Flotilla's
`CentralEvaluator`, outside the round's time, as the Flower App does.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.abstract.model import ModelLearnable, make_model_learnable
from nvflare.app_common.abstract.model_persistor import ModelPersistor
from nvflare.app_common.workflows.fedavg import FedAvg

from flotilla.api import load_job
from flotilla.fl.aggregator.evaluation import CentralEvaluator
from flotilla.fl.modelstate import build_job_model


def vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class JobModelPersistor(ModelPersistor):
    """The job's initial model (Flotilla's builder and seed), as the Flower App's ServerApp
    starts from it; saves the global model with torch.save, as NVFlare's PyTorch persistor."""

    def __init__(self, job_path: str = "") -> None:
        super().__init__()
        self.job_path = job_path

    def load_model(self, fl_ctx: FLContext) -> ModelLearnable:
        model = build_job_model(load_job(Path(self.job_path)))
        weights = {k: v.numpy() for k, v in model.state_dict().items()}
        return make_model_learnable(weights=weights, meta_props={})

    def save_model(self, model_learnable: ModelLearnable, fl_ctx: FLContext) -> None:
        run_dir = fl_ctx.get_engine().get_workspace().get_app_dir(fl_ctx.get_job_id())
        torch.save(model_learnable["weights"], os.path.join(run_dir, "FL_global_model.pt"))


class TimedFedAvg(FedAvg):
    """NVFlare's FedAvg (InTime weighted aggregation) with per-round timings written as JSON.

    `job_path` and `out_path` are set by the bench. The server process's RSS before round 1
    and its peak (VmHWM) after each round go into the JSON too.
    """

    def __init__(self, *args: Any, job_path: str = "", out_path: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.job_path = job_path
        self.out_path = out_path
        self._timings: list[dict[str, Any]] = []
        self._evaluator: CentralEvaluator | None = None
        self._started = time.time()
        self._baseline_kib = 0

    def load_model(self) -> FLModel:
        job = load_job(Path(self.job_path))
        test = job.spec.evaluation.test_data
        self._evaluator = CentralEvaluator(job, test) if test is not None else None
        model = super().load_model()
        self._baseline_kib = vm_kib("VmRSS")
        self._started = time.time()
        return model

    def send_model(self, *args: Any, **kwargs: Any) -> None:
        round_number = self.current_round - self.start_round + 1
        self._timings.append({"round": round_number, "started": time.time(), "trainSeconds": []})
        super().send_model(*args, **kwargs)

    def _aggregate_one_result(self, result: FLModel) -> bool:
        seconds = (result.metrics or {}).get("train-seconds")
        if seconds is not None:
            self._timings[-1]["trainSeconds"].append(float(seconds))
        return super()._aggregate_one_result(result)

    def update_model(self, model: FLModel, aggr_result: FLModel) -> FLModel:
        model = super().update_model(model, aggr_result)
        record = self._timings[-1]
        record["durationSeconds"] = time.time() - record["started"]
        if self._evaluator is not None:
            weights = {k: torch.as_tensor(v) for k, v in model.params.items()}
            record["accuracy"] = float(self._evaluator.evaluate(weights)["accuracy"])
            record["evaluated"] = time.time()
        out = {
            "started": self._started,
            "finished": time.time(),
            "rounds": self._timings,
            "serverPid": os.getpid(),
            "baselineKib": self._baseline_kib,
            "peakKib": vm_kib("VmHWM"),
        }
        Path(self.out_path).write_text(json.dumps(out))  # every round: a partial run still reads
        return model
