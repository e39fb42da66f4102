"""The figures and the table of bench/load_sites.py: a run's summary from the aggregator's
round records, the workers' tallies and the /proc samples (`summarize`); the memory a run
would need, checked before it starts (`needed_bytes`); a Markdown row per model and site
count; and the targets (aggregator memory of 3 models + 200 KiB a connected site, 1 s of
round overhead for the CNN at 1,000 sites), measured, never asserted.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from load_sites_config import GIB, KIB, MIB, RunConfig, model_parameters
from load_sites_watch import Watch

TARGET_OVERHEAD_S = 1.0  # CNN at 1,000 clients
TARGET_MODELS, TARGET_PER_CLIENT = 3, 200 * KIB


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(int(len(ordered) * share + 0.999999) - 1, 0)] if ordered else float("nan")


def summarize(
    config: RunConfig,
    *,
    phase: str,
    history: list[dict[str, Any]],
    tallies: list[dict[str, Any]],
    watch: Watch,
    memory: dict[str, int],
    fd_limit: str,
) -> dict[str, Any]:
    """The run's figures: rounds after the first (warm-up) unless there is only one."""
    measured = history[1:] or history
    opened = {r["round"]: r["started_at"] for r in history}
    events = [e for t in tallies for e in t["events"]]
    rounds = {r["round"] for r in measured}
    dispatch = [e["task"] - opened[e["round"]] for e in events if e["round"] in rounds]
    cpu, generator = [], []
    for record in measured:
        start, end = record["started_at"], record["started_at"] + record["duration_seconds"]
        cpu.append(watch.at(end).cpu - watch.at(start).cpu)
        generator.append(watch.at(end).generator - watch.at(start).generator)
    return {
        "model": config.model,
        "clients": config.clients,
        "phase": phase,
        "rounds": len(history),
        "first": history[0]["duration_seconds"] if history else float("nan"),
        "wall": statistics.median(r["duration_seconds"] for r in measured) if measured else 0.0,
        "cpu": statistics.median(cpu) if cpu else float("nan"),
        "generator": statistics.median(generator) if generator else float("nan"),
        "dispatch": [percentile(dispatch, q) for q in (0.5, 0.99, 1.0)],
        "base": memory["base"] * KIB,
        "connected": watch.connected(config.clients).rss * KIB,
        "peak": memory["peak"] * KIB,
        "fds": watch.peak("fds"),
        "tcp": watch.peak("tcp") * KIB,
        "sockets": watch.peak("sockets") * KIB,
        "pressures": memory["pressures"],
        "fdLimit": fd_limit,
        "threads": watch.peak("threads"),
        "sampled": sum(len(r["sampled"]) for r in history),
        "answered": sum(len(r["answered"]) for r in history),
        # Sampled and not folded in a completed round, and every task of a round that failed.
        "lost": sum(len(r["sampled"]) - len(r["answered"]) for r in history)
        + sum(e["round"] not in opened for e in events),
        "accepted": sum(e.get("answer") == "accepted" for e in events),
        "unanswered": dict(
            Counter(str(e.get("answer")) for e in events if e.get("answer") != "accepted")
        ),
        "refused": sum((Counter(t["refused"]) for t in tallies), Counter()),
        "errors": sum((Counter(t["errors"]) for t in tallies), Counter()),
        "fatal": [f for t in tallies for f in t["fatal"]][:5],
        "workersReported": len(tallies),
    }


def needed_bytes(*, model: str, clients: int, processes: int) -> int:
    """Aggregator: its runtime, 4 models, per client its TLS buffers and a download's
    piece in flight twice (plain and encrypted, at most 1 MiB each); a worker: Python,
    torch and aiohttp, ~100 KiB per site, 2 models."""
    size = model_parameters(model) * 4
    per_client = 0.5 * MIB + 2 * min(size, MIB)
    return int(0.5 * GIB + 4 * size + clients * per_client + processes * (0.4 * GIB + 2 * size))


HEADER = (
    "| model | clients | rounds | round wall (round 1) | **overhead** | CPU / round: "
    "aggregator, generator | task after round opens p50 / p99 / max | aggregator RSS: "
    "before → connected → peak | **(peak - before) / (3 models + 200 KiB x clients)** | "
    "(peak - before - 3 models) / client | aggregator's socket queues peak; host TCP buffers "
    "peak (pressure events) | fds peak "
    "(limit) | threads peak | answered / sampled (lost) | refused; retried |"
)


def row(result: dict[str, Any], train_seconds: float) -> str:
    size = model_parameters(result["model"]) * 4
    clients = result["clients"]
    grown = result["peak"] - result["base"]
    budget = TARGET_MODELS * size + TARGET_PER_CLIENT * clients
    p50, p99, top = result["dispatch"]
    refused = ", ".join(f"{k} {v}" for k, v in result["refused"].items()) or "0"
    retried = ", ".join(f"{k} {v}" for k, v in result["errors"].items()) or "0"
    timing = (
        f"{result['wall']:.3f} s ({result['first']:.2f} s) | "
        f"**{result['wall'] - train_seconds:.3f} s** | "
        f"{result['cpu']:.2f} s, {result['generator']:.2f} s | "
        f"{p50 * 1e3:.0f} / {p99 * 1e3:.0f} / {top * 1e3:.0f} ms"
        if result["rounds"]
        else "none completed | | |"
    )
    return (
        f"| {result['model']} ({model_parameters(result['model']) / 1e6:.2f}M) | {clients} | "
        f"{result['rounds']} ({result['phase']}) | {timing} | "
        f"{result['base'] / MIB:.0f} → {result['connected'] / MIB:.0f} → "
        f"{result['peak'] / MIB:.0f} MiB | **{grown / budget:.2f}x** | "
        f"{(grown - TARGET_MODELS * size) / clients / KIB:.0f} KiB | "
        f"{result['sockets'] / MIB:.0f} MiB; {result['tcp'] / MIB:.0f} MiB "
        f"({result['pressures']}) | "
        f"{result['fds']} ({result['fdLimit']}) | {result['threads']} | "
        f"{result['answered']} / {result['sampled']} ({result['lost']}) | {refused}; {retried} |"
    )


def slope(points: list[tuple[int, int]]) -> float:
    """Least-squares bytes per client."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def report_targets(results: list[dict[str, Any]], train_seconds: float) -> None:
    print("\nTargets (measured, not asserted):")
    for model in dict.fromkeys(r["model"] for r in results):
        mine = [r for r in results if r["model"] == model]
        if len(mine) >= 2:
            peak = slope([(r["clients"], r["peak"] - r["base"]) for r in mine])
            idle = slope([(r["clients"], r["connected"] - r["base"]) for r in mine])
            print(
                f"- {model}: aggregator peak grows {peak / KIB:.0f} KiB per connected client, "
                f"{idle / KIB:.0f} KiB with clients connected and idle (least squares over "
                f"{', '.join(str(r['clients']) for r in mine)}; target 200 KiB: "
                f"{peak / TARGET_PER_CLIENT:.2f}x)"
            )
    for r in results:
        size = model_parameters(r["model"]) * 4
        budget = TARGET_MODELS * size + TARGET_PER_CLIENT * r["clients"]
        lost = r["lost"]
        refused = sum(r["refused"].values())
        line = (
            f"- {r['model']} x {r['clients']}: memory {(r['peak'] - r['base']) / MIB:.1f} MiB "
            f"of {budget / MIB:.1f} MiB allowed ({(r['peak'] - r['base']) / budget:.2f}x); "
            f"lost {lost} (not folded in a completed round; uploads the generator saw "
            f"accepted: {r['accepted']}, answers in completed rounds: {r['answered']}), "
            f"refused {refused}, sites that gave up {len(r['fatal'])}"
        )
        if r["model"] == "cnn" and r["rounds"]:
            overhead = r["wall"] - train_seconds
            line += f"; overhead {overhead:.3f} s of {TARGET_OVERHEAD_S:g} s "
            line += f"({overhead / TARGET_OVERHEAD_S:.2f}x)"
        print(line)
        if r["phase"] != "done":
            print(f"  the job ended {r['phase']}: {r['failure'] or r['message']}")
            print(f"  uploads the generator did not see accepted: {r['unanswered']}")
        for fatal in r["fatal"]:
            print(f"  gave up: {fatal}")
