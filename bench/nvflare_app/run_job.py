"""Build the bench's NVFlare job with NVFlare's PyTorch FedAvg recipe and run it.

    python bench/nvflare_app/run_job.py --job JOB.yaml --out ROUNDS.json --sites a,b \\
        --env sim|poc --workspace DIR

`sim`: NVFlare's simulator (`SimEnv`: the server in one process, one client process per
site, each client's script in that process). `poc`: POC mode (`PocEnv`: a provisioned
server, one client per site and an admin session, each its own process, on 127.0.0.1;
its workspace is $NVFLARE_POC_WORKSPACE). Needs nvflare (not a project dependency).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe

from flotilla.api import load_job

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from nvflare_flotilla.server import JobModelPersistor, TimedFedAvg  # noqa: E402


class BenchFedAvgRecipe(FedAvgRecipe):
    """NVFlare's PyTorch FedAvg recipe with its controller timed (TimedFedAvg)."""

    def __init__(self, *, job_path: str, out_path: str, **kwargs: Any) -> None:
        self._bench_paths = (job_path, out_path)
        super().__init__(**kwargs)

    def _create_controller(self, persistor_id: str, model_params: Any, model_aggregator: Any):
        job_path, out_path = self._bench_paths
        return TimedFedAvg(
            job_path=job_path,
            out_path=out_path,
            num_clients=self.min_clients,
            num_rounds=self.num_rounds,
            persistor_id=persistor_id,
            model=model_params,
            save_filename=self.save_filename,
            aggregator=model_aggregator,
            task_name="train",
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sites", required=True, help="client names, comma-separated")
    parser.add_argument("--env", choices=("sim", "poc"), default="sim")
    parser.add_argument("--workspace", required=True)
    parser.add_argument(
        "--task-request-interval",
        type=float,
        help="seconds the server tells a client to wait before asking for its next task "
        "(NVFlare's `server.task_request_interval`; its default is 2)",
    )
    args = parser.parse_args()
    sites = args.sites.split(",")
    job = load_job(Path(args.job))
    recipe = BenchFedAvgRecipe(
        job_path=str(Path(args.job).resolve()),
        out_path=str(Path(args.out).resolve()),
        name="flotilla-bench",
        min_clients=len(sites),
        num_rounds=job.spec.rounds,
        train_script=str(HERE / "client.py"),
        train_args=f"--job {Path(args.job).resolve()}",
        model_persistor=JobModelPersistor(job_path=str(Path(args.job).resolve())),
    )
    if args.task_request_interval is not None:
        recipe.add_server_config({"server": {"task_request_interval": args.task_request_interval}})
    if args.env == "sim":
        from nvflare.recipe.sim_env import SimEnv

        env = SimEnv(clients=sites, num_threads=len(sites), workspace_root=args.workspace)
        run = recipe.execute(env)
        print(f"result: {run.get_result()}", flush=True)
    else:
        from nvflare.recipe.poc_env import PocEnv

        env = PocEnv(num_clients=len(sites), clients=sites)  # its default num_clients is 2
        try:
            run = recipe.execute(env)
            print(f"result: {run.get_result(timeout=3600)}", flush=True)
            print(f"status: {run.get_status()}", flush=True)
        finally:
            env.stop(clean_up=True)


if __name__ == "__main__":
    main()
