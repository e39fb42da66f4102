"""The MLflow backend against a real SQLite store: names and keys with quotes in them.

MLflow's filter grammar has no escape inside a quoted string: a value is quoted with the
quote it does not hold. A registered model name may hold either quote (spec.tracking allows
any name without '/', ':' or '%'), so the backend never puts the name in a filter.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from torch import nn

from flotilla.tracking.backend import _MLFLOW_ENV_DEFAULTS, MlflowBackend, filter_literal
from flotilla.tracking.served_model import ServedModel


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowBackend]:
    """One SQLite store for the module (creating its tables takes a second); MLflow's
    process-wide settings and variables are put back afterwards."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # MLflow writes nothing outside the test's directory
        for key in [*_MLFLOW_ENV_DEFAULTS, "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"]:
            patch.delenv(key, raising=False)
        yield MlflowBackend(f"sqlite:///{root / 'mlflow.db'}")
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
        mlflow.set_registry_uri(None)  # type: ignore[arg-type]


def _tiny_model() -> ServedModel:
    module = nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.Softmax(dim=1))
    return ServedModel(
        module=module, input_shape=(1, 2, 2), labels=["a", "b"], serialization_format="pickle"
    )


@pytest.mark.parametrize("name", ["O'Brien digits", 'the "best" digits', "both ' and \""])
def test_a_model_name_with_quotes_is_registered_once_per_round(
    backend: MlflowBackend, name: str
) -> None:
    _, run_id = backend.open_run(
        experiment="models",
        run_id=None,
        run_key=f"job-{name.encode().hex()}",
        run_name="job",
        tags={},
    )
    model = _tiny_model()

    first = backend.register_model(run_id, model, name=name, alias="candidate", round_number=3)
    again = backend.register_model(run_id, model, name=name, alias="candidate", round_number=3)

    assert first == again == "1"
    found = backend.client.get_model_version_by_alias(name, "candidate")
    assert (found.name, str(found.version)) == (name, "1")


def test_a_run_key_with_a_quote_finds_its_run_again(backend: MlflowBackend) -> None:
    key = "job-it's-mine"
    _, run_id = backend.open_run(
        experiment="quotes", run_id=None, run_key=key, run_name="job", tags={}
    )

    assert backend.find_run(experiment="quotes", run_key=key) == (
        backend.open_run(experiment="quotes", run_id=None, run_key=key, run_name="j", tags={})
    )
    assert backend.find_run(experiment="quotes", run_key="job-it") is None
    assert backend.find_run(experiment="quotes", run_key=key)[1] == run_id  # type: ignore[index]


@pytest.mark.parametrize(
    ("value", "quoted"),
    [("plain", "'plain'"), ("O'Brien", '"O\'Brien"'), ('say "hi"', "'say \"hi\"'")],
)
def test_filter_literals_take_the_quote_the_value_does_not_hold(value: str, quoted: str) -> None:
    assert filter_literal(value) == quoted


def test_a_value_with_both_quotes_cannot_be_a_filter_literal() -> None:
    with pytest.raises(ValueError, match="both quote characters"):
        filter_literal('it\'s "both"')
