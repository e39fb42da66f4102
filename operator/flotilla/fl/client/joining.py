"""Joining a job: the one request that tells a client its site, the job and the model's layout.

The aggregator answers `GET /v1/job` from the token alone. From then on the connection
names the site on every request (X-Flotilla-Site), and the aggregator checks it against
the token.
"""

from __future__ import annotations

from dataclasses import dataclass

from flotilla.api import FederatedJob, parse_job
from flotilla.fl.client.transport import AggregatorConnection


@dataclass(frozen=True)
class Assignment:
    """What the aggregator gave this client: its site, the job, and the layout header of
    the job's model as the aggregator builds it (a client of another version may differ)."""

    site: str
    job: FederatedJob
    layout_header: str


def join(connection: AggregatorConnection) -> Assignment:
    """Ask the aggregator which site this client is and what it trains (network I/O)."""
    info = connection.get_json("/v1/job")
    site: str = info["site"]
    connection.set_site(site)  # on every request from now on; checked against the token
    job = parse_job(info["spec"], source="the aggregator's /v1/job")
    return Assignment(site=site, job=job, layout_header=info["layoutHeader"])
