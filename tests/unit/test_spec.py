"""The FederatedJob model: the example parses, defaults hold, errors name field and value."""

from __future__ import annotations

import copy
import math
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from annotated_types import Le, Lt
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from flotilla.api import (
    FederatedJob,
    FederatedJobSpec,
    SpecError,
    StrategyParams,
    load_job,
    parse_job,
)
from flotilla.api.schedule import FederatedScheduleSpec

EXAMPLE = Path(__file__).parents[2] / "examples" / "digits.yaml"


def minimal() -> dict[str, Any]:
    return {
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": "job"},
        "spec": {
            "rounds": 3,
            "labels": ["cat", "dog"],
            "model": {"name": "mlp", "input": {"height": 8, "width": 8}},
        },
    }


def with_spec(**section: Any) -> dict[str, Any]:
    data = minimal()
    data["spec"].update(copy.deepcopy(section))
    return data


def error_of(data: object) -> str:
    with pytest.raises(SpecError) as caught:
        parse_job(data, source="test.yaml")
    return str(caught.value)


def test_example_parses_with_paths_resolved_next_to_the_file() -> None:
    job = load_job(EXAMPLE)

    assert job.metadata.name == "digits"
    assert job.spec.labels == [str(d) for d in range(10)]
    assert [s.name for s in job.spec.sites] == ["site-a", "site-b", "site-c", "site-d"]
    assert job.spec.training.momentum == 0.9
    site_a = job.site_data("site-a").cvat_export.path
    assert Path(site_a) == EXAMPLE.parent.absolute() / "data/digits/site-a"
    assert job.spec.evaluation.test_data is not None
    assert job.spec.evaluation.test_data.cvat_export.path.endswith("data/digits/test")
    job.require_local_sites()


def test_defaults() -> None:
    spec = parse_job(minimal(), source="t").spec

    assert (spec.seed, spec.task, spec.sites, spec.data) == (0, "classification", [], None)
    assert spec.model.input.channels == 3
    assert spec.clients.min_clients == 1 and spec.clients.per_round is None
    assert spec.clients.round_deadline_seconds == 300 and spec.clients.join_grace_seconds == 10
    assert spec.training.optimizer == "sgd" and spec.training.learning_rate == 0.05
    assert spec.training.validation_fraction == 0.1
    assert spec.evaluation.federated is True
    assert spec.compression.dtype == "float32" and spec.compression.zstd_level == 3
    assert spec.limits.max_update_norm is None
    assert spec.strategy.name == "fedavg"


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ({"name": "fedprox"}, {"proximal_mu": 0.01, "server_learning_rate": 1.0}),
        ({"name": "fedadam", "beta2": 0.999}, {"server_learning_rate": 0.01, "beta2": 0.999}),
        ({"name": "trimmedmean"}, {"trim_fraction": 0.1, "proximal_mu": 0.0}),
        ({"name": "multikrum", "selected": 2}, {"byzantine_clients": 0, "selected": 2}),
        ({"name": "fedmedian"}, {"mean_of_nearest": False}),
        ({"name": "fedmedian", "meanOfNearest": True}, {"mean_of_nearest": True}),
        (
            {"name": "trimmedmean", "trimFraction": 0.4, "meanOfNearest": True},
            {"mean_of_nearest": True, "trim_fraction": 0.4},
        ),
    ],
)
def test_strategy_params_fill_in_defaults(
    strategy: dict[str, Any], expected: dict[str, Any]
) -> None:
    data = with_spec(strategy=strategy, clients={"minClients": 3})

    params = parse_job(data, source="t").spec.strategy.params()

    assert isinstance(params, StrategyParams)
    for name, value in expected.items():
        assert getattr(params, name) == value


def test_buffered_aggregation_is_off_unless_asked_and_keeps_the_mean_strategies() -> None:
    assert parse_job(minimal(), source="t").spec.strategy.buffered is None
    data = with_spec(strategy={"name": "fedadam", "buffered": {"size": 3, "maxStaleness": 4}})

    buffered = parse_job(data, source="t").spec.strategy.buffered

    assert buffered is not None and (buffered.size, buffered.max_staleness) == (3, 4)


def test_snake_case_names_are_accepted_too() -> None:
    data = with_spec(training={"learning_rate": 0.1})

    assert parse_job(data, source="t").spec.training.learning_rate == 0.1


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            with_spec(training={"learnRate": 0.1}),
            "spec.training.learnRate: unknown field (got 0.1)",
        ),
        (with_spec(training={"optimizer": "rmsprop"}), "spec.training.optimizer: Input should be"),
        (with_spec(training={"optimizer": "rmsprop"}), "(got 'rmsprop')"),
        (
            with_spec(training={"learningRate": -1}),
            "spec.training.learningRate: Input should be greater than 0 (got -1)",
        ),
        (with_spec(rounds=0), "spec.rounds: Input should be greater than or equal to 1 (got 0)"),
        (
            with_spec(strategy={"trimFraction": 0.2}),
            "spec.strategy.trimFraction: not used by strategy 'fedavg' (got 0.2)",
        ),
        (
            with_spec(strategy={"meanOfNearest": True}),
            "spec.strategy.meanOfNearest: not used by strategy 'fedavg'; only the "
            "coordinate-wise rules (fedmedian, trimmedmean) take it (got True)",
        ),
        (
            with_spec(
                strategy={"name": "krum", "byzantineClients": 1, "meanOfNearest": False},
                clients={"minClients": 5},
            ),
            "spec.strategy.meanOfNearest: not used by strategy 'krum'",
        ),
        (
            with_spec(
                strategy={"name": "trimmedmean", "trimFraction": 0.1, "meanOfNearest": True},
                clients={"minClients": 5},
            ),
            "spec.strategy.meanOfNearest: with trimFraction=0.1 a round of clients.minClients=5 "
            "trims nothing, so the mean of the values nearest the trimmed mean is the plain "
            "mean; raise trimFraction to at least 1 / minClients (0.2) (got True)",
        ),
        (
            with_spec(training={"optimizer": "adam", "momentum": 0.9}),
            "spec.training.momentum: only used by optimizer 'sgd', not 'adam' (got 0.9)",
        ),
        (
            with_spec(clients={"minClients": 3, "perRound": 2}),
            "spec.clients.perRound: must be >= minClients (3) (got 2)",
        ),
        (
            with_spec(strategy={"name": "krum", "byzantineClients": 1}, clients={"minClients": 4}),
            "spec.clients.minClients: strategy 'krum' with byzantineClients=1 needs minClients >= 5"
            " (n > 2f + 2) (got 4)",
        ),
        (
            with_spec(
                strategy={"name": "multikrum", "selected": 4},
                clients={"minClients": 3, "perRound": 3},
            ),
            "spec.strategy.selected: must be <= clients.perRound (3) (got 4)",
        ),
        (
            with_spec(strategy={"buffered": {"size": 0}}),
            "spec.strategy.buffered.size: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            with_spec(strategy={"buffered": {"size": 2, "maxStaleness": -1}}),
            "spec.strategy.buffered.maxStaleness: Input should be greater than or equal to 0",
        ),
        (
            with_spec(strategy={"buffered": {"maxStaleness": 3}}),
            "spec.strategy.buffered.size: required field is missing",
        ),
        (
            with_spec(strategy={"name": "fedmedian", "buffered": {"size": 2}}),
            "spec.strategy.buffered: buffered aggregation needs a mean-based strategy (fedavg, "
            "fedprox, fedadam, fedyogi, fedadagrad), not strategy.name 'fedmedian'",
        ),
        (
            with_spec(
                strategy={"buffered": {"size": 2}}, privacy={"clipNorm": 1, "noiseMultiplier": 1}
            ),
            "spec.strategy.buffered: differential privacy accounts per round of sampled clients",
        ),
        (
            with_spec(strategy={"buffered": {"size": 2}}, clients={"perRound": 2}),
            "spec.clients.perRound: not used with spec.strategy.buffered",
        ),
        (
            with_spec(sites=[{"name": "a"}, {"name": "b"}, {"name": "a"}]),
            "spec.sites[2].name: duplicate of sites[0] (got 'a')",
        ),
        (with_spec(sites=[{"name": "Site_A"}]), "spec.sites[0].name: must be a DNS-1123 label"),
        (with_spec(labels=["a", "b", "a"]), "spec.labels[2]: duplicate of labels[0] (got 'a')"),
        (with_spec(labels=["a"]), "spec.labels: List should have at least 2 items"),
        (
            with_spec(model={"entrypoint": "my-pkg:build", "input": {"height": 1, "width": 1}}),
            "spec.model.entrypoint: must look like 'package.module:function' (got 'my-pkg:build')",
        ),
        (
            with_spec(
                model={"name": "mlp", "entrypoint": "p.m:f", "input": {"height": 1, "width": 1}}
            ),
            "spec.model.entrypoint: set only one of name or entrypoint (got 'both')",
        ),
        (
            with_spec(model={"input": {"height": 1, "width": 1}}),
            "spec.model: set one of name or entrypoint (got neither)",
        ),
        (with_spec(model={"name": "mlp"}), "spec.model.input: required field is missing"),
        (
            with_spec(task="detection"),
            "spec.model.name: the built-in model is a classification model, and spec.task is "
            "detection (got 'mlp')",
        ),
        (
            with_spec(tracking={"registeredModel": "a/b"}),
            "spec.tracking.registeredModel: String should match pattern",
        ),
        (with_spec(tracking={"alias": "1st"}), "spec.tracking.alias: String should match pattern"),
        (
            with_spec(tracking={"checkpointEveryRounds": -1}),
            "spec.tracking.checkpointEveryRounds: Input should be greater than or equal to 0",
        ),
        (with_spec(tracking={"trackingURI": "x"}), "spec.tracking.trackingURI: unknown field"),
        ({**minimal(), "apiVersion": "v1"}, "apiVersion: Input should be 'flotilla.dev/v1alpha1'"),
        ({**minimal(), "kind": "Job"}, "kind: Input should be 'FederatedJob' (got 'Job')"),
        ({**minimal(), "metadata": {"name": "x" * 64}}, "metadata.name: must be a DNS-1123 label"),
    ],
)
def test_errors_name_the_camel_case_path_and_value(data: dict[str, Any], expected: str) -> None:
    assert expected in error_of(data)


def test_every_problem_is_listed_one_per_line() -> None:
    data = with_spec(rounds=0, training={"batchSize": 0, "learningRate": 0})

    problems = error_of(data).splitlines()[1:]

    assert [line.strip().split(":")[0] for line in problems] == [
        "spec.rounds",
        "spec.training.batchSize",
        "spec.training.learningRate",
    ]


def test_multiple_unused_strategy_params_are_all_reported() -> None:
    message = error_of(with_spec(strategy={"name": "fedmedian", "tau": 1, "beta1": 0.5}))

    assert "spec.strategy.beta1: not used by strategy 'fedmedian' (got 0.5)" in message
    assert "spec.strategy.tau: not used by strategy 'fedmedian' (got 1.0)" in message


def test_metadata_keeps_what_the_api_server_adds() -> None:
    data = minimal()
    data["metadata"].update(generation=2, uid="u", managedFields=[{"manager": "kubectl"}])

    job = parse_job(data, source="t")

    assert job.metadata.generation == 2
    assert job.to_dict()["metadata"]["managedFields"] == [{"manager": "kubectl"}]


def test_status_parses() -> None:
    data = minimal()
    data["status"] = {
        "phase": "Running",
        "round": 2,
        "clients": {"desired": 4, "ready": 3},
        "conditions": [{"type": "Ready", "status": "True", "reason": "RoundOpen"}],
        "mlflowRunId": "abc",
    }

    status = parse_job(data, source="t").status

    assert status is not None and status.clients.ready == 3 and status.mlflow_run_id == "abc"
    data["status"]["conditions"][0]["reason"] = "round open"
    assert "status.conditions[0].reason: must be CamelCase" in error_of(data)


def test_round_trip_through_to_dict() -> None:
    job = load_job(EXAMPLE)

    assert parse_job(job.to_dict(), source="wire") == job
    assert "perRound" not in job.to_dict()["spec"]["clients"]


def test_resolve_paths_leaves_absolute_paths_alone(tmp_path: Path) -> None:
    data = with_spec(
        data={"cvatExport": {"path": "shared"}},
        sites=[{"name": "a", "data": {"cvatExport": {"path": "/abs/a"}}}, {"name": "b"}],
    )

    job = parse_job(data, source="t").resolve_paths(tmp_path)

    assert job.site_data("a").cvat_export.path == "/abs/a"
    assert job.site_data("b").cvat_export.path == str(tmp_path / "shared")


def test_site_data_and_local_sites_explain_what_is_missing() -> None:
    job = parse_job(with_spec(sites=[{"name": "a"}], clients={"minClients": 2}), source="t")

    with pytest.raises(SpecError, match=r"spec.sites\[0\].data: site has no data source"):
        job.site_data("a")
    with pytest.raises(SpecError, match=r"site 'zz' is not listed .* and spec\.data is not set"):
        job.site_data("zz")
    shared = {"cvatExport": {"path": "/data/shared"}}
    cluster_job = parse_job(with_spec(data=shared), source="t")
    assert cluster_job.site_data("any-node").cvat_export.path == "/data/shared"
    with pytest.raises(SpecError) as caught:
        job.require_local_sites()
    assert "spec.clients.minClients: more than the 1 sites" in str(caught.value)
    assert "spec.sites[0].data" in str(caught.value)
    with pytest.raises(SpecError, match=r"spec\.sites: a local run needs at least one site"):
        parse_job(minimal(), source="t").require_local_sites()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"nope\.yaml.*\n.*file not found"):
        load_job(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("spec:\n  rounds: [1, 2\n", "YAML syntax error at line 3"),
        ("a: 1\na: 2\n", "duplicate key 'a'"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("a: 1\n---\nb: 2\n", "expected one YAML document, found 2"),
        ("# nothing\n", "no YAML document"),
    ],
)
def test_bad_yaml_files(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(text)

    with pytest.raises(SpecError) as caught:
        load_job(path)

    assert expected in str(caught.value)
    assert str(path) in str(caught.value)


def test_models_are_frozen() -> None:
    job = parse_job(minimal(), source="t")

    with pytest.raises(ValueError, match="frozen"):
        job.spec.rounds = 5  # type: ignore[misc]


def test_from_dict_raises_spec_error() -> None:
    with pytest.raises(SpecError, match=r"spec\.rounds: required field is missing"):
        FederatedJob.from_dict({**minimal(), "spec": {"labels": ["a", "b"]}})


def _models_under(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
    """Every pydantic model reachable from ``model``'s fields, ``model`` first."""
    seen: set[type[BaseModel]] = set()
    todo = [model]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        yield current
        for field in current.model_fields.values():
            todo += [t for t in _types_in(field.annotation) if issubclass(t, BaseModel)]


def _types_in(annotation: object) -> list[type]:
    found = [annotation] if isinstance(annotation, type) else []
    for argument in typing.get_args(annotation):
        found += _types_in(argument)
    return found


def _number_fields(kind: type) -> list[tuple[type[BaseModel], str]]:
    """(model, camelCase name) of each field whose value is a ``kind`` (optional or not)."""
    fields = []
    for model in _models_under(FederatedJob):
        for name, field in model.model_fields.items():
            if kind in _types_in(field.annotation) and bool not in _types_in(field.annotation):
                fields.append((model, field.alias or name))
    return fields


FLOAT_FIELDS = _number_fields(float)
INT_FIELDS = _number_fields(int)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, "inf", True])
@pytest.mark.parametrize(
    ("model", "field"), FLOAT_FIELDS, ids=[f"{m.__name__}.{f}" for m, f in FLOAT_FIELDS]
)
def test_every_float_field_takes_only_finite_numbers(
    model: type[BaseModel], field: str, value: object
) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate({field: value})

    assert any(error["loc"][:1] == (field,) for error in caught.value.errors())


@pytest.mark.parametrize("value", [True, False, "3", 3.0])
@pytest.mark.parametrize(
    ("model", "field"), INT_FIELDS, ids=[f"{m.__name__}.{f}" for m, f in INT_FIELDS]
)
def test_every_integer_field_takes_only_integers(
    model: type[BaseModel], field: str, value: object
) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate({field: value})

    assert any(error["loc"][:1] == (field,) for error in caught.value.errors())


def test_the_number_rule_reaches_numbers_inside_lists() -> None:
    data = with_spec(data={"cvat": {"taskIds": [1, True]}})

    assert "spec.data.cvat.taskIds[1]: must be an integer, not a boolean (got True)" in error_of(
        data
    )


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"seed": 2**32}, "spec.seed: Input should be less than or equal to 4294967295"),
        ({"seed": -1}, "spec.seed: Input should be greater than or equal to 0"),
        (
            {"clients": {"joinGraceSeconds": 604_801}},
            "spec.clients.joinGraceSeconds: Input should be less than or equal to 604800",
        ),
        (
            {"training": {"maxSeconds": 604_801}},
            "spec.training.maxSeconds: Input should be less than or equal to 604800",
        ),
        (
            {"training": {"weightDecay": 1.5}},
            "spec.training.weightDecay: Input should be less than or equal to 1",
        ),
        (
            {"clients": {"minClients": 10_001}},
            "spec.clients.minClients: Input should be less than or equal to 10000",
        ),
        (
            {"tracking": {"flushTimeoutSeconds": 604_801}},
            "spec.tracking.flushTimeoutSeconds: Input should be less than or equal to 604800",
        ),
        (
            {"privacy": {"clipNorm": 1, "noiseMultiplier": math.inf}},
            "spec.privacy.noiseMultiplier: Input should be a finite number (got inf)",
        ),
    ],
)
def test_numbers_with_a_meaning_have_upper_bounds(section: dict[str, Any], expected: str) -> None:
    assert expected in error_of(with_spec(**section))


def test_the_largest_seed_and_deadline_still_pass() -> None:
    data = with_spec(seed=2**32 - 1, clients={"roundDeadlineSeconds": 604_800})

    spec = parse_job(data, source="t").spec

    assert (spec.seed, spec.clients.round_deadline_seconds) == (2**32 - 1, 604_800)


def _spec_models() -> list[type[BaseModel]]:
    """Every model a user writes: under FederatedJobSpec and FederatedScheduleSpec."""
    return list(
        dict.fromkeys([*_models_under(FederatedJobSpec), *_models_under(FederatedScheduleSpec)])
    )


def _number_leaves(annotation: object, bounds: tuple[object, ...]) -> Iterator[tuple[str, bool]]:
    """(where, has a maximum) for each int or float in ``annotation``: where is "", "[]" or "{}"."""
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in (int, float):
        yield "", any(isinstance(b, Le | Lt) for b in bounds)
    elif origin is typing.Annotated:
        extra = [
            m for a in arguments[1:] for m in (a.metadata if isinstance(a, FieldInfo) else [a])
        ]
        yield from _number_leaves(arguments[0], (*bounds, *extra))
    elif origin in (list, dict):
        # A bound on the list or the map (its length) is not a bound on its items.
        mark = "[]" if origin is list else "{}"
        yield from ((mark + where, bounded) for where, bounded in _number_leaves(arguments[-1], ()))
    else:  # X | None
        for argument in arguments:
            yield from _number_leaves(argument, bounds)


def _spec_numbers() -> dict[str, bool]:
    """Model.fieldName (with [] for list items) of every number in the spec: has a maximum?"""
    return {
        f"{model.__name__}.{field.alias or name}{where}": bounded
        for model in _spec_models()
        for name, field in model.model_fields.items()
        for where, bounded in _number_leaves(field.annotation, tuple(field.metadata))
    }


def test_every_number_a_user_writes_has_an_upper_bound() -> None:
    """Finite is not enough: 1e300 passes a lower bound, validates, and overflows in the run."""
    numbers = _spec_numbers()

    assert {
        "PrivacySpec.clipNorm",
        "CvatServerSource.taskIds[]",
        "Toleration.tolerationSeconds",
        "OnDataChange.checkIntervalSeconds",
        "FederatedJobSpec.seed",
    } <= numbers.keys()
    assert [name for name, bounded in numbers.items() if not bounded] == []


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            {"privacy": {"clipNorm": 1e300, "noiseMultiplier": 1e300}},
            [
                "spec.privacy.clipNorm: Input should be less than or equal to 1000000",
                "spec.privacy.noiseMultiplier: Input should be less than or equal to 100",
            ],
        ),
        (
            {"privacy": {"clipNorm": 1e20, "noiseMultiplier": 1e20, "targetEpsilon": 1e300}},
            [
                "spec.privacy.clipNorm:",
                "spec.privacy.noiseMultiplier:",
                "spec.privacy.targetEpsilon:",
            ],
        ),
        (
            {"strategy": {"name": "fedprox", "proximalMu": 1e308}},
            ["spec.strategy.proximalMu: Input should be less than or equal to 1000"],
        ),
        (
            {"strategy": {"name": "fedadam", "tau": 1e20}},
            ["spec.strategy.tau: Input should be less than or equal to 1"],
        ),
        (
            {"limits": {"maxUpdateNorm": 1e300}},
            ["spec.limits.maxUpdateNorm: Input should be less than or equal to 1000000000000"],
        ),
        (
            {"data": {"cvat": {"url": "https://cvat.example", "taskIds": [1, 2**31]}}},
            ["spec.data.cvat.taskIds[1]: Input should be less than or equal to 2147483647"],
        ),
        (
            {"data": {"cvat": {"url": "https://cvat.example", "projectId": 10**30}}},
            ["spec.data.cvat.projectId: Input should be less than or equal to 2147483647"],
        ),
        (
            {"runtime": {"tolerations": [{"key": "k", "tolerationSeconds": 2**63}]}},
            [
                "spec.runtime.tolerations[0].tolerationSeconds: "
                "Input should be less than or equal to 604800"
            ],
        ),
    ],
    ids=[
        "privacy-1e300",
        "privacy-1e20",
        "fedprox-mu",
        "fedadam-tau",
        "max-update-norm",
        "cvat-task-id",
        "cvat-project-id",
        "toleration-seconds",
    ],
)
def test_huge_but_finite_numbers_are_refused_naming_the_field(
    section: dict[str, Any], expected: list[str]
) -> None:
    error = error_of(with_spec(**section))

    for line in expected:
        assert line in error


def test_the_largest_privacy_and_strategy_numbers_still_pass() -> None:
    job = parse_job(
        with_spec(
            privacy={"clipNorm": 1e6, "noiseMultiplier": 100, "targetEpsilon": 1e6},
            strategy={"name": "fedprox", "proximalMu": 1e3},
            limits={"maxUpdateNorm": 1e12},
            data={"cvat": {"url": "https://cvat.example", "taskIds": [2**31 - 1]}},
            runtime={"tolerations": [{"key": "k", "tolerationSeconds": 604_800}]},
        ),
        source="t",
    )

    assert job.spec.privacy is not None and job.spec.privacy.noise_multiplier == 100
    assert job.spec.strategy.proximal_mu == 1e3
