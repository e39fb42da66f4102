"""The ServerApp: FedAvg over every node, timing each round and scoring the job's test data.

A round here is what Flotilla's round record measures: from sending the train messages
(configure_train) to the aggregated model (end of aggregate_train). The clients report
their training seconds; the bench subtracts the slowest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flotilla.fl.aggregator.evaluation import CentralEvaluator
from flotilla.fl.modelstate import build_job_model
from flotilla_flower.shared import job_at

app = ServerApp()


class TimedFedAvg(FedAvg):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rounds: list[dict[str, Any]] = []

    def configure_train(self, server_round: int, *args: Any, **kwargs: Any) -> Iterable[Message]:
        self.rounds.append({"round": server_round, "started": time.time()})
        return super().configure_train(server_round, *args, **kwargs)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        record = self.rounds[-1]
        record["trainSeconds"] = [
            float(r.content["metrics"]["train-seconds"]) for r in replies if r.has_content()
        ]
        result = super().aggregate_train(server_round, replies)
        record["durationSeconds"] = time.time() - record["started"]
        return result


@app.main()
def main(grid: Grid, context: Context) -> None:
    job = job_at(str(context.run_config["job"]))
    nodes = len(job.spec.sites)
    strategy = TimedFedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=nodes,
        min_available_nodes=nodes,
    )
    test = job.spec.evaluation.test_data
    evaluator = CentralEvaluator(job, test) if test is not None else None
    accuracy: dict[int, float] = {}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if evaluator is None:
            return None
        scores = evaluator.evaluate(arrays.to_torch_state_dict())
        accuracy[server_round] = float(scores["accuracy"])
        if server_round:
            strategy.rounds[-1]["accuracy"] = accuracy[server_round]
            strategy.rounds[-1]["evaluated"] = time.time()
        return MetricRecord({"accuracy": accuracy[server_round]})

    started = time.time()
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(build_job_model(job).state_dict()),
        num_rounds=job.spec.rounds,
        evaluate_fn=evaluate if evaluator is not None else None,
    )
    out = {"started": started, "finished": time.time(), "rounds": strategy.rounds}
    Path(str(context.run_config["out"])).write_text(json.dumps(out))
