"""The aggregator's per-site metric families: data readiness, what each site reported with
its updates (clients are often not scrapeable: the aggregator exports their numbers), and
each site's link health (broken transfers, resumed bytes, upload rate)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from flotilla.fl.aggregator.links import LinkHealth

_CLIENT_GAUGES = {
    "trainSeconds": (
        "flotilla_client_train_seconds",
        "Local training time of the site's last update",
    ),
    "examples": ("flotilla_client_examples", "Training examples behind the site's last update"),
    "loss": ("flotilla_client_loss", "Training loss the site reported with its last update"),
    "accuracy": ("flotilla_client_accuracy", "Training accuracy the site reported last"),
}


def site_readiness(job: str, reports: Mapping[str, Mapping[str, Any]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "flotilla_site_data_ready",
        "1 when the site loaded its data, 0 when it reported an error (CVAT refused, bad export)",
        labels=["flotilla_job", "site"],
    )
    for site, report in sorted(reports.items()):
        family.add_metric([job, site], 1.0 if report.get("ready") else 0.0)
    return family


def client_metrics(job: str, history: list[dict[str, Any]]) -> Iterable[Metric]:
    latest: dict[str, Mapping[str, Any]] = {}
    updates: dict[str, int] = {}
    for row in history:
        for site, numbers in (row.get("clients") or {}).items():
            latest[site] = numbers
            updates[site] = updates.get(site, 0) + 1
    for key, (name, doc) in _CLIENT_GAUGES.items():
        family = GaugeMetricFamily(name, doc, labels=["flotilla_job", "site"])
        for site, numbers in sorted(latest.items()):
            value = numbers.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                family.add_metric([job, site], float(value))
        yield family
    counter = CounterMetricFamily(
        "flotilla_client_updates",
        "Updates each site had folded into a round",
        labels=["flotilla_job", "site"],
    )
    for site, count in sorted(updates.items()):
        counter.add_metric([job, site], count)
    yield counter


def link_metrics(job: str, links: LinkHealth) -> Iterable[Metric]:
    """Each site's link: broken transfers, what resuming saved, its latest upload rate."""
    resets = CounterMetricFamily(
        "flotilla_site_transfer_resets",
        "Uploads and model downloads whose connection broke off mid-body, per site",
        labels=["flotilla_job", "site", "direction"],
    )
    resumed = CounterMetricFamily(
        "flotilla_site_resumed_bytes",
        "Bytes not sent again because a broken transfer resumed, per site",
        labels=["flotilla_job", "site"],
    )
    rate = GaugeMetricFamily(
        "flotilla_site_upload_bytes_per_second",
        "Wire rate of the site's latest whole upload body (one connection)",
        labels=["flotilla_job", "site"],
    )
    for site, link in sorted(links.sites.items()):
        resets.add_metric([job, site, "up"], link.upload_resets)
        resets.add_metric([job, site, "down"], link.download_resets)
        resumed.add_metric([job, site], link.resumed_bytes)
        if link.upload_bytes_per_second is not None:
            rate.add_metric([job, site], link.upload_bytes_per_second)
    yield from (resets, resumed, rate)
