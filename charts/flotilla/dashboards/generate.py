"""Write Flotilla's two Grafana dashboards as JSON, built with grafana-foundation-sdk.

    python charts/flotilla/dashboards/generate.py            # (re)write the JSON files here
    python charts/flotilla/dashboards/generate.py --check    # exit 1 if they are out of date

The panels are data (titles, PromQL, units) and one function turns them into SDK builders,
so the two dashboards cannot drift apart in style. Every query uses only the metrics in
docs/metrics.md (tests/chart/test_alerts_and_dashboards.py checks it). The chart globs the
JSON files into ConfigMaps for Grafana's dashboard sidecar; commit them after a change here.
Needs `grafana-foundation-sdk==1769699379!11.6.0` (the `dev` extra): a plain install gives
the Grafana 10.1 build.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, prometheus, stat, timeseries
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders.common import ReduceDataOptions, StackingConfig
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import BigValueTextMode, StackingMode
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh, VariableSort
from panels import JOB_ROWS, OVERVIEW_ROWS, Panel, Row  # beside this file

HERE = Path(__file__).resolve().parent
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
LAST_VALUE = ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def targets(panel: Panel) -> list[prometheus.Dataquery]:
    """One query per line; stats and bar gauges show the value now (an instant query)."""
    queries = []
    for i, q in enumerate(panel.queries):
        query = prometheus.Dataquery().expr(q.expr).legend_format(q.legend).ref_id(chr(65 + i))
        queries.append(query.instant() if panel.kind in ("stat", "bargauge") else query.range())
    return queries


def build_panel(panel: Panel, panel_id: int) -> timeseries.Panel | stat.Panel | bargauge.Panel:
    builder: timeseries.Panel | stat.Panel | bargauge.Panel
    if panel.kind == "stat":
        mode = BigValueTextMode.NAME if panel.names_only else BigValueTextMode.VALUE_AND_NAME
        builder = stat.Panel().text_mode(mode).reduce_options(LAST_VALUE)
    elif panel.kind == "bargauge":
        builder = bargauge.Panel().reduce_options(LAST_VALUE)
    else:
        builder = timeseries.Panel().fill_opacity(10 if panel.stacked else 0)
        if panel.stacked:
            builder = builder.stacking(StackingConfig().mode(StackingMode.NORMAL))
    builder = (
        builder.id(panel_id)
        .title(panel.title)
        .description(panel.description)
        .datasource(DATASOURCE)
        .unit(panel.unit)
        .span(panel.width)
        .height(panel.height)
        .targets(targets(panel))
    )
    if panel.min is not None:
        builder = builder.min(panel.min)
    if panel.max is not None:
        builder = builder.max(panel.max)
    return builder


def build_dashboard(
    *, uid: str, title: str, description: str, rows: tuple[Row, ...], multi_job: bool
) -> dash.Dashboard:
    job_variable = (
        dash.QueryVariable("flotilla_job")
        .label("Job")
        .datasource(DATASOURCE)
        .query("label_values(flotilla_round_current, flotilla_job)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(multi_job)
        .include_all(multi_job)
    )
    if multi_job:
        job_variable = job_variable.all_value(".*")
    board = (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["flotilla", "federated-learning"])
        .refresh("30s")
        .time("now-6h", "now")
        .with_variable(
            dash.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(job_variable)
    )
    next_id = 1
    for row in rows:
        board = board.with_row(dash.Row(row.title).id(next_id))
        next_id += 1
        for panel in row.panels:
            board = board.with_panel(build_panel(panel, next_id))
            next_id += 1
    return board


def dashboards() -> dict[str, dash.Dashboard]:
    return {
        "flotilla-overview.json": build_dashboard(
            uid="flotilla-overview",
            title="Flotilla / Overview",
            description="The operator and every federated job at a glance.",
            rows=OVERVIEW_ROWS,
            multi_job=True,
        ),
        "flotilla-job.json": build_dashboard(
            uid="flotilla-job",
            title="Flotilla / Job",
            description="One federated job: rounds, model quality, clients, traffic, sites.",
            rows=JOB_ROWS,
            multi_job=False,
        ),
    }


def render(board: dash.Dashboard) -> str:
    return json.dumps(board.build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="directory (default: beside me)")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on drift")
    args = parser.parse_args(argv)
    stale = []
    for name, board in dashboards().items():
        path, text = args.out / name, render(board)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run {Path(__file__).name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
