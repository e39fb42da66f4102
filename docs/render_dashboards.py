"""Picture the job dashboard from a real run: Prometheus scrapes `flotilla run`, then each
panel's own PromQL (read from charts/flotilla/dashboards/flotilla-job.json) is queried
through Prometheus' HTTP API and drawn with matplotlib at the panel's gridPos.

    .venv/bin/python docs/render_dashboards.py              # writes docs/images/dashboard-job.png

Grafana is not installable here, so this stands in for a screenshot: same queries, same
layout, no Grafana. Needs `prometheus` on PATH (Debian: apt-get install prometheus) and
the digits example data (`make data`). Everything else (config, TSDB, job state) lives in
a temporary directory; Prometheus listens on 127.0.0.1 only. The overview dashboard needs
the operator's metrics, which a local run has not: it is not drawn.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
JOB_DASHBOARD = ROOT / "charts" / "flotilla" / "dashboards" / "flotilla-job.json"
RULES = ROOT / "charts" / "flotilla" / "alerts" / "flotilla-rules.yaml"
METRICS_MARK = "Prometheus metrics at "


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", type=Path, default=ROOT / "examples" / "digits.yaml")
    parser.add_argument("--rounds", type=int, default=40, help="spec.rounds for the run")
    parser.add_argument(
        "--local-epochs", type=int, default=25, help="longer rounds: several scrapes each"
    )
    parser.add_argument("--scrape-interval", default="1s")
    parser.add_argument(
        "--rate-interval", default="15s", help="what $__rate_interval stands for in the queries"
    )
    parser.add_argument(
        "--bad-requests",
        type=int,
        default=12,
        help="uploads with an unknown token sent during the run, so the rejections panel "
        "has something real to show (0: none)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "dashboard-job.png")
    parser.add_argument("--prometheus", default="prometheus", help="the prometheus binary")
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def long_job(source: Path, out: Path, *, rounds: int, epochs: int) -> str:
    """A copy of the job with more, longer rounds; data paths made absolute."""
    job = yaml.safe_load(source.read_text())
    job["spec"]["rounds"] = rounds
    job["spec"]["training"]["localEpochs"] = epochs

    def absolute(node: Any) -> None:
        if isinstance(node, dict):
            if "cvatExport" in node:
                path = Path(node["cvatExport"]["path"])
                node["cvatExport"]["path"] = str((source.parent / path).resolve())
            for value in node.values():
                absolute(value)
        elif isinstance(node, list):
            for value in node:
                absolute(value)

    absolute(job["spec"])
    out.write_text(yaml.safe_dump(job, sort_keys=False))
    return str(job["metadata"]["name"])


def start_prometheus(args: argparse.Namespace, work: Path, port: int) -> subprocess.Popen[bytes]:
    targets = work / "targets.json"
    targets.write_text("[]")
    config = {
        "global": {"scrape_interval": args.scrape_interval, "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                # "aggregator" in the job name: what FlotillaAggregatorDown selects.
                "job_name": "flotilla-aggregator",
                "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
            }
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    command = [
        args.prometheus,
        f"--config.file={work / 'prometheus.yml'}",
        f"--storage.tsdb.path={work / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    log = (work / "prometheus.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    wait_until(lambda: get(f"http://127.0.0.1:{port}/-/ready") is not None, 60)
    return process


def get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body: bytes = response.read()
            return body
    except OSError:
        return None


def wait_until(ready: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for Prometheus")
        time.sleep(0.2)


def run_job(job_file: Path, work: Path, targets: Path, bad_requests: int) -> None:
    """Run the job; point Prometheus at the aggregator once it says where /metrics is."""
    command = [sys.executable, "-m", "flotilla", "run", str(job_file), "--no-tracking"]
    command += ["--state-dir", str(work / "state")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the address line arrives as printed
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=work, env=env)
    assert process.stdout is not None
    for line in process.stdout:
        print(line, end="", flush=True)
        if METRICS_MARK in line:
            url = line.split(METRICS_MARK)[1].strip().removesuffix("/metrics")
            host = urllib.parse.urlsplit(url).netloc
            targets.write_text(json.dumps([{"targets": [host]}]))
            if bad_requests:
                threading.Thread(target=send_bad_requests, args=(url, bad_requests)).start()
    if process.wait() != 0:
        raise SystemExit(f"flotilla run failed ({process.returncode}); logs in {work}")


def send_bad_requests(url: str, count: int) -> None:
    """Uploads with a token the aggregator does not know: each is refused as unauthorized."""
    time.sleep(15)
    for _ in range(count):
        request = urllib.request.Request(
            f"{url}/v1/rounds/1/update",
            data=b"not an update",
            method="PUT",
            headers={"Authorization": "Bearer not-a-token"},
        )
        with contextlib.suppress(OSError):
            urllib.request.urlopen(request, timeout=5).close()
        time.sleep(2)


def query_range(base: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": 1})
    body = get(f"{base}/api/v1/query_range?{params}")
    if body is None:
        raise SystemExit(f"Prometheus refused the query {expr}")
    result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
    return result


def panel_data(
    base: str, panel: dict[str, Any], substitutions: dict[str, str], window: tuple[float, float]
) -> list[tuple[str, list[float], list[float]]]:
    """Each series of the panel's queries as (legend, seconds since start, values)."""
    series = []
    for target in panel["targets"]:
        expr = target["expr"]
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        results = query_range(base, expr, *window)
        if target.get("instant") and results:
            # Grafana asks "now"; the job has ended, so take its last scrape instead: only
            # the series present then (the phase it was in, not every phase it went through).
            last = max(float(r["values"][-1][0]) for r in results)
            results = [r for r in results if float(r["values"][-1][0]) == last]
        for result in results:
            legend = target.get("legendFormat", "")
            for label, value in result["metric"].items():
                legend = legend.replace("{{" + label + "}}", value)
            times = [float(t) - window[0] for t, _ in result["values"]]
            values = [float(v) for _, v in result["values"]]
            series.append((legend, times, values))
    return series


UNITS = {
    "percentunit": lambda v: f"{v:.0%}",
    "bytes": lambda v: human_bytes(v),
    "s": lambda v: f"{v:.3g} s",
    "reqps": lambda v: f"{v:.2g}/s",
    "ops": lambda v: f"{v:.2g}/s",
    "Bps": lambda v: f"{human_bytes(v)}/s",
    "cpm": lambda v: f"{v:.2g}/min",
}


def human_bytes(value: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000:
            return f"{value:.3g} {unit}"
        value /= 1000
    return f"{value:.3g} TB"


def last_value(values: list[float]) -> float | None:
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    return finite[-1] if finite else None


def draw_panel(
    ax: Any, panel: dict[str, Any], series: list[tuple[str, list[float], list[float]]]
) -> None:
    """One panel the way Grafana shows it: lines, big numbers (stat) or bars (bar gauge)."""
    from matplotlib.ticker import FuncFormatter

    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    fmt = UNITS.get(defaults.get("unit", ""), lambda v: f"{v:.4g}")
    ax.set_title(panel["title"], loc="left", fontsize=10, fontweight="bold")
    if not series:
        ax.text(0.5, 0.5, "No data", ha="center", va="center", color="grey", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    if panel["type"] == "stat":
        ax.axis("off")
        names_only = panel["options"].get("textMode") == "name"
        for i, (legend, _, values) in enumerate(series):
            value = last_value(values)
            text = legend if names_only else f"{legend}: {'-' if value is None else fmt(value)}"
            x = (i + 0.5) / len(series)
            ax.text(x, 0.4, text, ha="center", va="center", fontsize=18, color="tab:green")
        return
    if panel["type"] == "bargauge":
        legends = [legend for legend, _, _ in series]
        values = [last_value(v) or 0.0 for _, _, v in series]
        ax.barh(legends, values, color="tab:green")
        ax.set_xlim(defaults.get("min", 0), defaults.get("max", max(values) or 1))
        for i, value in enumerate(values):
            ax.text(value, i, f"{fmt(value)} ", va="center", ha="right", color="white")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))
        return
    for legend, times, values in series:
        ax.plot(times, values, label=legend, linewidth=1.5)
    if "min" in defaults:
        ax.set_ylim(bottom=defaults["min"])
    if "max" in defaults:
        ax.set_ylim(top=defaults["max"])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(v) // 60}:{int(v) % 60:02d}"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2 if len(series) > 4 else 1)


def draw_dashboard(board: dict[str, Any], data: dict[int, Any], *, caption: str, out: Path) -> None:
    """Every panel at its gridPos (24 columns), titled like Grafana's; rows as headings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
    fig = plt.figure(figsize=(20, 0.42 * height + 1))
    top = 1 - 0.9 / fig.get_figheight()
    unit_h = top / height
    for panel in board["panels"]:
        g = panel["gridPos"]
        left, bottom = g["x"] / 24, top - (g["y"] + g["h"]) * unit_h
        if panel["type"] == "row":
            fig.text(
                left + 0.005,
                bottom + unit_h * 0.3,
                panel["title"],
                fontsize=12,
                fontweight="bold",
                color="dimgray",
            )
            continue
        pad_x, pad_y = 0.035, 0.9 * unit_h
        ax = fig.add_axes(
            (
                left + pad_x,
                bottom + pad_y,
                g["w"] / 24 - pad_x - 0.008,
                g["h"] * unit_h - pad_y - 0.9 * unit_h,
            )
        )
        draw_panel(ax, panel, data[panel["id"]])
    fig.suptitle(caption, x=0.01, y=0.995, ha="left", va="top", fontsize=11)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="flotilla-dash-") as tmp:
        work = Path(tmp)
        job_file = work / "job.yaml"
        job = long_job(args.job, job_file, rounds=args.rounds, epochs=args.local_epochs)
        port = free_port()
        prometheus = start_prometheus(args, work, port)
        try:
            version = json.loads(get(f"http://127.0.0.1:{port}/api/v1/status/buildinfo") or b"{}")
            start = time.time()
            run_job(job_file, work, work / "targets.json", args.bad_requests)
            time.sleep(3)  # a last scrape of the finished job, if the aggregator is still up
            end = time.time()
            board = json.loads(JOB_DASHBOARD.read_text())
            substitutions = {"$flotilla_job": job, "$__rate_interval": args.rate_interval}
            base = f"http://127.0.0.1:{port}"
            data = {
                panel["id"]: panel_data(base, panel, substitutions, (start, end))
                for panel in board["panels"]
                if panel["type"] != "row"
            }
            alerts = query_range(base, "ALERTS", start, end)
        finally:
            prometheus.terminate()
            prometheus.wait(30)
    prometheus_version = version.get("data", {}).get("version", "?")
    caption = (
        f"{board['title']}: job {job} ({args.rounds} rounds of {args.local_epochs} local "
        f"epochs, 4 sites) scraped every {args.scrape_interval} by Prometheus "
        f"{prometheus_version}; $__rate_interval = {args.rate_interval}; x: m:ss since start"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw_dashboard(board, data, caption=caption, out=args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    states = sorted({f"{a['metric']['alertname']} ({a['metric']['alertstate']})" for a in alerts})
    print(f"alerts pending or firing during the run: {', '.join(states) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
