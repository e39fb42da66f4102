"""The panels of Flotilla's Grafana dashboards as plain data: titles, PromQL, units.

generate.py turns them into grafana-foundation-sdk builders and writes the JSON. Every query
uses only the metrics in docs/metrics.md (tests/chart/test_alerts_and_dashboards.py checks
it). `$flotilla_job` and `$__rate_interval` are Grafana's variables.
"""

from __future__ import annotations

from dataclasses import dataclass

RATE = "$__rate_interval"
ONE_JOB = 'flotilla_job="$flotilla_job"'  # the job dashboard shows one job
JOBS = 'flotilla_job=~"$flotilla_job"'  # the overview shows any number


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    """One panel: `kind` is timeseries, stat (latest value) or bargauge."""

    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 8
    height: int = 8
    min: float | None = None
    max: float | None = None
    stacked: bool = False
    names_only: bool = False  # a stat that shows the series' name (a phase), not its value


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


def per_round(counter: str, selector: str) -> str:
    """A counter's increase per completed round over the panel's interval."""
    return (
        f"sum(increase({counter}{{{selector}}}[{RATE}]))"
        f" / sum(increase(flotilla_rounds_completed_total{{{selector}}}[{RATE}]))"
    )


def quantile(q: float, histogram: str, selector: str = "", by: str = "le") -> str:
    matchers = f"{{{selector}}}" if selector else ""
    return f"histogram_quantile({q}, sum by ({by}) (rate({histogram}_bucket{matchers}[{RATE}])))"


def per_site(metric: str) -> tuple[Query, ...]:
    return (Query(f"max by (site) ({metric}{{{ONE_JOB}}})", "{{site}}"),)


JOB_ROWS = (
    Row(
        "Progress",
        (
            Panel(
                "Phase",
                "The aggregator's phase (flotilla_job_phase == 1).",
                (Query(f"max by (phase) (flotilla_job_phase{{{ONE_JOB}}}) == 1", "{{phase}}"),),
                kind="stat",
                width=6,
                height=5,
                names_only=True,
            ),
            Panel(
                "Round",
                "The round being played and spec.rounds.",
                (
                    Query(f"max(flotilla_round_current{{{ONE_JOB}}})", "current"),
                    Query(f"max(flotilla_rounds_planned{{{ONE_JOB}}})", "planned"),
                ),
                kind="stat",
                width=6,
                height=5,
            ),
            Panel(
                "Clients connected",
                "Clients connected to the aggregator now.",
                (Query(f"max(flotilla_clients_present{{{ONE_JOB}}})", "connected"),),
                kind="stat",
                width=6,
                height=5,
            ),
            Panel(
                "Rounds completed",
                "Rounds aggregated and checkpointed, of those planned.",
                (
                    Query(
                        f"max(flotilla_rounds_completed_total{{{ONE_JOB}}})"
                        f" / max(flotilla_rounds_planned{{{ONE_JOB}}})",
                        "done",
                    ),
                ),
                kind="bargauge",
                unit="percentunit",
                width=6,
                height=5,
                min=0,
                max=1,
            ),
            Panel(
                "Round progress",
                "Current round, rounds completed and rounds planned.",
                (
                    Query(f"max(flotilla_round_current{{{ONE_JOB}}})", "current round"),
                    Query(f"max(flotilla_rounds_completed_total{{{ONE_JOB}}})", "completed"),
                    Query(f"max(flotilla_rounds_planned{{{ONE_JOB}}})", "planned"),
                ),
                width=24,
            ),
        ),
    ),
    Row(
        "Global model",
        (
            Panel(
                "Candidate vs champion",
                "spec.tracking.promotion: this job's final score beside the champion's it was "
                "compared with, both on the aggregator's test split; empty without a gate or "
                "before the final evaluation.",
                (Query(f"max by (model) (flotilla_model_score{{{ONE_JOB}}})", "{{model}}"),),
                unit="percentunit",
                kind="bargauge",
                width=8,
                min=0,
                max=1,
            ),
            Panel(
                "Promoted",
                "1: the promotion alias moved to this job's version; 0: the gate kept it.",
                (Query(f"max(flotilla_model_promoted{{{ONE_JOB}}})", "promoted"),),
                kind="stat",
                width=4,
                min=0,
                max=1,
            ),
            Panel(
                "Global accuracy or mAP@0.5 by source",
                "central: the aggregator's test split; federated: the clients' hold-outs "
                "(a round later). Accuracy for classification jobs, mAP@0.5 for detection.",
                (
                    Query(f"max by (source) (flotilla_global_accuracy{{{ONE_JOB}}})", "{{source}}"),
                    Query(
                        f"max by (source) (flotilla_global_map50{{{ONE_JOB}}})",
                        "mAP@0.5 {{source}}",
                    ),
                ),
                unit="percentunit",
                width=12,
                min=0,
                max=1,
            ),
            Panel(
                "Global loss by source",
                "Loss of the latest evaluated global model.",
                (Query(f"max by (source) (flotilla_global_loss{{{ONE_JOB}}})", "{{source}}"),),
                width=12,
                min=0,
            ),
        ),
    ),
    Row(
        "Clients and rounds",
        (
            Panel(
                "Clients per round",
                "Per completed round over the interval: slots sampled, updates folded in, "
                "sampled clients that timed out, attempts replayed for too few answers.",
                (
                    Query(per_round("flotilla_clients_sampled_total", ONE_JOB), "sampled"),
                    Query(per_round("flotilla_clients_answered_total", ONE_JOB), "answered"),
                    Query(per_round("flotilla_clients_timed_out_total", ONE_JOB), "timed out"),
                    Query(per_round("flotilla_round_retries_total", ONE_JOB), "retries"),
                ),
                width=12,
                min=0,
            ),
            Panel(
                "Rejected requests by reason",
                "Requests refused with a 4xx. round_closed and duplicate are benign (late or "
                "repeated uploads); the others point at a client or a token.",
                (
                    Query(
                        f"sum by (reason) (rate(flotilla_updates_rejected_total{{{ONE_JOB}}}"
                        f"[{RATE}]))",
                        "{{reason}}",
                    ),
                ),
                unit="reqps",
                width=12,
                min=0,
                stacked=True,
            ),
            Panel(
                "Round duration",
                "From the round's opening to its aggregate, from the histogram.",
                (
                    Query(quantile(0.5, "flotilla_round_duration_seconds", ONE_JOB), "p50"),
                    Query(quantile(0.95, "flotilla_round_duration_seconds", ONE_JOB), "p95"),
                ),
                unit="s",
                min=0,
            ),
            Panel(
                "Aggregation time",
                "Finishing the aggregate and the server optimizer step.",
                (
                    Query(quantile(0.5, "flotilla_aggregation_seconds", ONE_JOB), "p50"),
                    Query(quantile(0.95, "flotilla_aggregation_seconds", ONE_JOB), "p95"),
                ),
                unit="s",
                min=0,
            ),
            Panel(
                "Bytes per round",
                "Update bytes received (as sent on the wire) and global-model "
                "bytes sent, per completed round.",
                (
                    Query(per_round("flotilla_received_bytes_total", ONE_JOB), "received"),
                    Query(per_round("flotilla_sent_bytes_total", ONE_JOB), "sent"),
                ),
                unit="bytes",
                min=0,
            ),
        ),
    ),
    Row(
        "Sites (as reported with each site's last update)",
        (
            Panel(
                "Training time per site",
                "Local training time of the site's last update.",
                per_site("flotilla_client_train_seconds"),
                unit="s",
                width=6,
                min=0,
            ),
            Panel(
                "Examples per site",
                "Training examples behind the site's last update.",
                per_site("flotilla_client_examples"),
                width=6,
                min=0,
            ),
            Panel(
                "Training loss per site",
                "The site's training loss, last update.",
                per_site("flotilla_client_loss"),
                width=6,
                min=0,
            ),
            Panel(
                "Updates folded per site",
                "Updates of each site folded into rounds.",
                (
                    Query(
                        f"sum by (site) (increase(flotilla_client_updates_total{{{ONE_JOB}}}"
                        f"[{RATE}]))",
                        "{{site}}",
                    ),
                ),
                width=6,
                min=0,
            ),
        ),
    ),
    Row(
        "Links (as the aggregator sees each site's transfers)",
        (
            Panel(
                "Transfer resets per site",
                "Uploads (up) and model downloads (down) whose connection broke off mid-body, "
                "per minute: a lossy or flapping link.",
                (
                    Query(
                        "60 * sum by (site, direction) "
                        f"(rate(flotilla_site_transfer_resets_total{{{ONE_JOB}}}[{RATE}]))",
                        "{{site}} {{direction}}",
                    ),
                ),
                unit="cpm",
                min=0,
            ),
            Panel(
                "Resumed bytes per site",
                "Bytes not sent again because a broken upload or download resumed where it "
                "broke off, per second (both directions).",
                (
                    Query(
                        f"sum by (site) (rate(flotilla_site_resumed_bytes_total{{{ONE_JOB}}}"
                        f"[{RATE}]))",
                        "{{site}}",
                    ),
                ),
                unit="Bps",
                min=0,
            ),
            Panel(
                "Upload throughput per site",
                "Wire rate of each site's latest whole upload body, on one connection.",
                per_site("flotilla_site_upload_bytes_per_second"),
                unit="Bps",
                min=0,
            ),
        ),
    ),
    Row(
        "Buffered aggregation (spec.strategy.buffered; empty for synchronous rounds)",
        (
            Panel(
                "Updates in the buffer",
                "Updates folded into the server update being made; the server steps when the "
                "buffer holds spec.strategy.buffered.size.",
                (Query(f"max(flotilla_buffer_updates{{{ONE_JOB}}})", "buffered"),),
                min=0,
            ),
            Panel(
                "Update staleness",
                "Server updates between the model an update was trained on and the one it was "
                "folded into (each counts 1/sqrt(1 + staleness)); a slow site shows here.",
                (
                    Query(quantile(0.5, "flotilla_update_staleness", ONE_JOB), "p50"),
                    Query(quantile(0.9, "flotilla_update_staleness", ONE_JOB), "p90"),
                ),
                min=0,
            ),
            Panel(
                "Buffer journal failures",
                "Failed writes of the buffer to disk (a full disk): the updates stay folded, "
                "but are lost if the aggregator dies before the server update's checkpoint.",
                (
                    Query(
                        "sum(increase(flotilla_buffer_journal_failures_total"
                        f"{{{ONE_JOB}}}[{RATE}]))",
                        "failures",
                    ),
                ),
                min=0,
            ),
        ),
    ),
)

OVERVIEW_ROWS = (
    Row(
        "Operator",
        (
            Panel(
                "FederatedJobs by phase",
                "What the operator's last reconcile of each job saw.",
                (Query("sum by (phase) (flotilla_operator_jobs)", "{{phase}}"),),
                min=0,
                stacked=True,
            ),
            Panel(
                "Client pods",
                "Client pods of all jobs.",
                (Query("sum by (state) (flotilla_operator_client_pods)", "{{state}}"),),
                min=0,
            ),
            Panel(
                "Reconciles",
                "Reconciles per second, by what started them.",
                (
                    Query(
                        "sum by (trigger) (rate(flotilla_operator_reconcile_duration_seconds_count"
                        f"[{RATE}]))",
                        "{{trigger}}",
                    ),
                ),
                unit="ops",
                min=0,
            ),
            Panel(
                "Reconcile errors",
                "Reconciles that raised, by exception type; failed "
                "Kubernetes API calls, by HTTP status.",
                (
                    Query(
                        f"sum by (error) (rate(flotilla_operator_reconcile_errors_total[{RATE}]))",
                        "{{error}}",
                    ),
                    Query(
                        f"sum by (status) (rate(flotilla_operator_api_errors_total[{RATE}]))",
                        "API {{status}}",
                    ),
                ),
                unit="ops",
                width=12,
                min=0,
            ),
            Panel(
                "Reconcile duration p95",
                "95th percentile of one reconcile, by trigger.",
                (
                    Query(
                        quantile(
                            0.95, "flotilla_operator_reconcile_duration_seconds", by="le, trigger"
                        ),
                        "{{trigger}}",
                    ),
                ),
                unit="s",
                width=12,
                min=0,
            ),
        ),
    ),
    Row(
        "Jobs (from their aggregators)",
        (
            Panel(
                "Progress",
                "Rounds completed of rounds planned, per job.",
                (
                    Query(
                        f"max by (flotilla_job) (flotilla_rounds_completed_total{{{JOBS}}})"
                        f" / max by (flotilla_job) (flotilla_rounds_planned{{{JOBS}}})",
                        "{{flotilla_job}}",
                    ),
                ),
                kind="bargauge",
                unit="percentunit",
                min=0,
                max=1,
            ),
            Panel(
                "Current round vs planned",
                "The round being played and spec.rounds, per job.",
                (
                    Query(
                        f"max by (flotilla_job) (flotilla_round_current{{{JOBS}}})",
                        "{{flotilla_job}} current",
                    ),
                    Query(
                        f"max by (flotilla_job) (flotilla_rounds_planned{{{JOBS}}})",
                        "{{flotilla_job}} planned",
                    ),
                ),
                min=0,
            ),
            Panel(
                "Aggregator phase",
                "Each job's aggregator phase.",
                (
                    Query(
                        f"max by (flotilla_job, phase) (flotilla_job_phase{{{JOBS}}}) == 1",
                        "{{flotilla_job}}: {{phase}}",
                    ),
                ),
                kind="stat",
                names_only=True,
            ),
            Panel(
                "Global accuracy or mAP@0.5",
                "Latest evaluated global model, per job and source (mAP@0.5 for detection).",
                (
                    Query(
                        f"max by (flotilla_job, source) (flotilla_global_accuracy{{{JOBS}}})",
                        "{{flotilla_job}} {{source}}",
                    ),
                    Query(
                        f"max by (flotilla_job, source) (flotilla_global_map50{{{JOBS}}})",
                        "{{flotilla_job}} {{source}} mAP@0.5",
                    ),
                ),
                unit="percentunit",
                width=24,
                min=0,
                max=1,
            ),
        ),
    ),
)
