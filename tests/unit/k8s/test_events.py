"""Events about a job, as the API server takes them and `kubectl describe fj` shows them."""

from __future__ import annotations

import logging

from flotilla.k8s.events import MAX_MESSAGE, EventLog, event

JOB = {
    "apiVersion": "flotilla.dev/v1alpha1",
    "kind": "FederatedJob",
    "metadata": {"name": "digits", "namespace": "ml", "uid": "uid-1"},
}


def test_an_event_points_at_the_job_and_names_the_operator() -> None:
    made = event(JOB, type="Warning", reason="PodRefused", message="x" * 5000, now="T")

    assert made["metadata"] == {"generateName": "digits.", "namespace": "ml"}
    assert made["involvedObject"] == {
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "FederatedJob",
        "name": "digits",
        "namespace": "ml",
        "uid": "uid-1",
    }
    assert (made["type"], made["reason"], made["count"]) == ("Warning", "PodRefused", 1)
    assert len(made["message"]) == MAX_MESSAGE
    assert made["source"] == {"component": "flotilla-operator"}


def test_the_log_keeps_what_the_reconcile_recorded_in_order() -> None:
    log = EventLog(logging.getLogger("test"))

    log.info("Created", "Created client Pod for node edge-1")
    log.warn("PodRefused", "client pod of site a: quota")

    assert log.pending == [
        ("Normal", "Created", "Created client Pod for node edge-1"),
        ("Warning", "PodRefused", "client pod of site a: quota"),
    ]
