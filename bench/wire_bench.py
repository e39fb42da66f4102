"""Wire size and accuracy of the digits job for each update encoding (spec.compression).

Runs `flotilla run --summary-json` on the digits job (4 sites, every site every round)
once per encoding: float32, float16, int8 (one scale per tensor), each without and with
zstd. Reports the bytes the aggregator received per round, the ratio to float32 and the
final central accuracy against float32's.

    .venv/bin/python bench/wire_bench.py [--rounds 10] [--encodings float32,int8+zstd]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobs import digits_job

ENCODINGS = ["float32", "float32+zstd", "float16", "float16+zstd", "int8", "int8+zstd"]
SITES = ["site-a", "site-b", "site-c", "site-d"]


def run(job: Path, scratch: Path) -> dict:
    summary = scratch / "summary.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "flotilla",
            "run",
            str(job),
            "--no-tracking",
            "--state-dir",
            str(scratch / "state"),
            "--summary-json",
            str(summary),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "FLOTILLA_LOG_LEVEL": "WARNING"},
    )
    return json.loads(summary.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--encodings", default=",".join(ENCODINGS))
    args = parser.parse_args()
    from flotilla.data.digits_example import write_digits_example

    print(
        f"machine: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; digits job, "
        f"{len(SITES)} sites, {args.rounds} rounds\n"
    )
    print(
        "| encoding | bytes per round | **fp32 / this** | final accuracy | **Δ vs fp32 (points)** |"
    )
    print("| --- | --- | --- | --- | --- |")
    baseline: tuple[float, float] | None = None
    with tempfile.TemporaryDirectory(prefix="flotilla-wire-") as scratch:
        root = Path(scratch)
        write_digits_example(root / "data", sites=SITES, seed=0)
        for encoding in args.encodings.split(","):
            dtype, _, zstd = encoding.partition("+")
            compression = {"dtype": dtype, "zstd": bool(zstd)}
            job = digits_job(
                root=root,
                data=root / "data",
                rounds=args.rounds,
                sites=SITES,
                compression=compression,
            )
            (root / encoding).mkdir()
            summary = run(job, root / encoding)
            per_round = statistics.mean(r["bytesReceived"] for r in summary["history"])
            accuracy = summary["final"]["accuracy"]
            if baseline is None and encoding == "float32":
                baseline = (per_round, accuracy)
            ratio = f"**{baseline[0] / per_round:.2f}x**" if baseline else "-"
            delta = f"**{(accuracy - baseline[1]) * 100:+.2f}**" if baseline else "-"
            print(
                f"| {encoding} | {per_round / 1024:.1f} KiB | {ratio} | {accuracy:.4f} | {delta} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
