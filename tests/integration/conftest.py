"""Fixtures the integration modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.mlflow_processes import TrackingServer


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackingServer]:
    """One real `mlflow server` for the session (it takes 10-30 s to start): each module
    records under model and experiment names of its own."""
    server = TrackingServer(tmp_path_factory.mktemp("mlflow"))
    server.start_server()
    yield server
    server.stop()
