"""Warm start without MLflow: the URI forms, the label rule, the shape check, the weights file."""

from __future__ import annotations

import asyncio
import copy
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from flotilla.api import FederatedJob, SpecError, load_job
from flotilla.api.model_init import RegisteredModelRef, RunRef, parse_model_init
from flotilla.fl.aggregator.main import AggregatorOptions, build_engine
from flotilla.fl.aggregator.warm_fit import WeightsMismatch, added_labels, fit_weights
from flotilla.fl.aggregator.warm_start import (
    WarmStartError,
    forget_lineage,
    save_lineage,
    saved_lineage,
    warm_start,
)
from flotilla.fl.modelstate import initial_global_model
from flotilla.tracking.parent import Lineage
from flotilla.tracking.weights import encode_weights, read_weights, weights_file, weights_round

RUN_ID = "0123456789abcdef0123456789abcdef"


def job_data(**model: Any) -> dict[str, Any]:
    return {
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": "job"},
        "spec": {
            "rounds": 3,
            "labels": ["cat", "dog"],
            "model": {"name": "mlp", "input": {"channels": 1, "height": 4, "width": 4}} | model,
        },
    }


# -- the URI -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("models:/digits@candidate", RegisteredModelRef(name="digits", alias="candidate")),
        (
            "models:/O'Brien digits@prod_2",
            RegisteredModelRef(name="O'Brien digits", alias="prod_2"),
        ),
        ("models:/digits/12", RegisteredModelRef(name="digits", version=12)),
        (f"runs:/{RUN_ID}", RunRef(run_id=RUN_ID)),
    ],
)
def test_each_accepted_form_parses_and_prints_back(uri: str, expected: Any) -> None:
    parsed = parse_model_init(uri)

    assert parsed == expected
    assert str(parsed) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "models:/digits",
        "models:/digits/0",
        "models:/digits/latest",
        "models:/digits@",
        "models:/digits@1st",
        "models:/a/b/3",
        "models:/@candidate",
        f"runs:/{RUN_ID}/model",
        "runs:/",
        "s3://bucket/model.safetensors",
        "digits@candidate",
    ],
)
def test_the_spec_refuses_another_form_naming_the_field_and_the_forms(uri: str) -> None:
    with pytest.raises(SpecError) as caught:
        FederatedJob.from_dict(job_data(init=uri))

    (line,) = caught.value.problems
    assert line.startswith("spec.model.init: must be models:/NAME@ALIAS, models:/NAME/VERSION")
    assert repr(uri) in line


def test_an_absent_init_leaves_the_spec_as_it_was() -> None:
    job = FederatedJob.from_dict(job_data())

    assert job.spec.model.init is None
    assert "init" not in job.to_dict()["spec"]["model"]


def test_the_command_line_overrides_init_and_is_checked_by_its_flag_name() -> None:
    job = FederatedJob.from_dict(job_data(init="models:/digits@candidate"))

    assert job.with_model_init("models:/digits/3").spec.model.init == "models:/digits/3"
    with pytest.raises(SpecError, match=r"--init: must be .*\(got 'models:/digits'\)"):
        job.with_model_init("models:/digits")


# -- the label rule --------------------------------------------------------------------------


def test_the_same_labels_add_nothing() -> None:
    assert added_labels(["cat", "dog"], ["cat", "dog"]) == ()


def test_labels_appended_at_the_end_are_the_added_ones() -> None:
    assert added_labels(["cat", "dog"], ["cat", "dog", "fox", "owl"]) == ("fox", "owl")


@pytest.mark.parametrize(
    ("labels", "says"),
    [
        (["dog", "cat", "fox"], "label 0 is 'dog' here and 'cat' in the parent"),
        (["cat", "fox", "dog"], "label 1 is 'fox' here and 'dog' in the parent"),
        (["cat"], "the parent has 2 labels and the job 1"),
    ],
)
def test_labels_moved_or_removed_are_refused_naming_both_lists(
    labels: list[str], says: str
) -> None:
    with pytest.raises(WeightsMismatch) as caught:
        added_labels(["cat", "dog"], labels)

    assert says in str(caught.value)
    assert "parent labels ['cat', 'dog']" in str(caught.value)


# -- the shape check and the fitted tensors ----------------------------------------------------


def classifier(classes: int, *, hidden: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(classes * 10 + hidden)
    return {
        "0.weight": torch.randn(hidden, 4, generator=generator),
        "0.bias": torch.randn(hidden, generator=generator),
        "2.weight": torch.randn(classes, hidden, generator=generator),
        "2.bias": torch.randn(classes, generator=generator),
    }


def test_the_same_architecture_and_labels_take_every_parent_tensor() -> None:
    parent, initial = classifier(2), classifier(2, hidden=3)
    initial = {name: tensor + 100 for name, tensor in initial.items()}
    before = copy.deepcopy(initial)

    fitted = fit_weights(parent, parent_labels=["a", "b"], initial=initial, labels=["a", "b"])

    assert fitted.grown == () and fitted.added_labels == ()
    for name, tensor in parent.items():
        assert torch.equal(fitted.tensors[name], tensor)
        assert torch.equal(initial[name], before[name])  # the model's own tensors untouched


def test_a_grown_label_list_keeps_the_old_rows_and_seeds_the_new_ones() -> None:
    parent, initial = classifier(2), classifier(3)

    fitted = fit_weights(parent, parent_labels=["a", "b"], initial=initial, labels=["a", "b", "c"])

    assert fitted.added_labels == ("c",)
    assert fitted.grown == ("2.weight", "2.bias")
    for name in ("2.weight", "2.bias"):
        assert torch.equal(fitted.tensors[name][:2], parent[name])
        assert torch.equal(fitted.tensors[name][2:], initial[name][2:])
    assert torch.equal(fitted.tensors["0.weight"], parent["0.weight"])


def test_a_tensor_of_another_shape_is_refused_naming_it_and_both_shapes() -> None:
    with pytest.raises(WeightsMismatch) as caught:
        fit_weights(
            classifier(2, hidden=3),
            parent_labels=["a", "b"],
            initial=classifier(2, hidden=5),
            labels=["a", "b"],
        )

    assert "tensor '0.weight' is [3, 4] in the parent and [5, 4] in this job's model" in str(
        caught.value
    )


def test_a_grown_label_list_does_not_excuse_another_hidden_size() -> None:
    with pytest.raises(WeightsMismatch, match=r"tensor '0.weight' .*only add rows"):
        fit_weights(
            classifier(2, hidden=3),
            parent_labels=["a", "b"],
            initial=classifier(3, hidden=5),
            labels=["a", "b", "c"],
        )


def test_tensors_of_other_names_are_refused_naming_them() -> None:
    parent = classifier(2)
    parent["1.weight"] = parent.pop("2.weight")

    with pytest.raises(WeightsMismatch) as caught:
        fit_weights(parent, parent_labels=["a", "b"], initial=classifier(2), labels=["a", "b"])

    message = str(caught.value)
    assert "the parent has no tensor ['2.weight']" in message
    assert "the model has no tensor ['1.weight']" in message


# -- the weights file and the lineage -----------------------------------------------------------


def test_the_weights_file_keeps_tensors_and_labels(tmp_path: Path) -> None:
    tensors = classifier(2) | {"steps": torch.tensor(3)}  # an integer buffer is left out
    path = tmp_path / weights_file(7)
    path.write_bytes(
        encode_weights(tensors, labels=["a", "b"], task="classification", info={"k": 1})
    )

    logged = read_weights(path)

    assert weights_round(f"weights/{path.name}") == 7
    assert logged.labels == ["a", "b"] and logged.task == "classification"
    assert logged.metadata["k"] == "1"
    assert sorted(logged.tensors) == sorted(classifier(2))
    assert torch.equal(logged.tensors["2.weight"], tensors["2.weight"])


def test_a_weights_file_without_labels_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "round-000001.safetensors"
    save_file(classifier(2), str(path))

    with pytest.raises(ValueError, match="does not record the labels"):
        read_weights(path)


def test_lineage_pins_an_alias_to_its_version_and_survives_a_restart(tmp_path: Path) -> None:
    lineage = Lineage(
        uri="models:/digits@candidate",
        run_id=RUN_ID,
        round=3,
        model_name="digits",
        model_version="2",
    )

    save_lineage(tmp_path, lineage)

    assert saved_lineage(tmp_path) == lineage
    assert lineage.params() == {"model.parent": "models:/digits/2"}
    assert lineage.tags()["flotilla.parent.version"] == "2"
    assert Lineage(uri=f"runs:/{RUN_ID}", run_id=RUN_ID, round=3).pinned() == f"runs:/{RUN_ID}"
    forget_lineage(tmp_path)
    assert saved_lineage(tmp_path) is None


def test_without_an_mlflow_server_the_job_stops_naming_init(tmp_path: Path) -> None:
    job = FederatedJob.from_dict(job_data(init="models:/digits@candidate"))
    layout, model = initial_global_model(job)
    before = bytes(model)

    with pytest.raises(WarmStartError) as caught:
        warm_start(job, layout=layout, model=model, state_dir=tmp_path, tracking_uri=None)

    assert str(caught.value).startswith(
        "spec.model.init 'models:/digits@candidate': no MLflow server to read it from"
    )
    assert bytes(model) == before and saved_lineage(tmp_path) is None


# -- warm start and resume -------------------------------------------------------------------


def test_a_job_resumed_from_its_checkpoint_never_reads_init(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job = load_job(Path(__file__).resolve().parents[2] / "examples" / "digits.yaml")
    evaluation = job.spec.evaluation.model_copy(update={"test_data": None})  # no data read
    job = job.model_copy(update={"spec": job.spec.model_copy(update={"evaluation": evaluation})})
    caplog.set_level(logging.INFO, logger="flotilla.fl.aggregator.main")
    options = AggregatorOptions(state_dir=tmp_path, tracking=False)
    first = build_engine(job, sites=["site-a"], options=options)
    asyncio.run(first.persister.checkpoint(0, first.global_model))

    # No MLflow at all: reading init would stop the job. The checkpoint, written by the
    # job without init, is accepted as the same job's.
    resumed = build_engine(
        job.with_model_init("models:/digits@candidate"), sites=["site-a"], options=options
    )

    assert bytes(resumed.global_model) == bytes(first.global_model)
    assert "spec.model.init 'models:/digits@candidate' is not read again" in caplog.text
