"""The data-source fields of the spec: export or live CVAT, aliases, and their errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flotilla.api import parse_job
from tests.unit.test_spec import error_of, with_spec


def _site(data: dict[str, Any]) -> dict[str, Any]:
    return with_spec(sites=[{"name": "site-a", "data": data}])


def test_a_live_cvat_site_with_aliases_and_a_coco_export_parse() -> None:
    live = {
        "cvat": {
            "url": "https://cvat.site-a",
            "taskIds": [3, 4],
            "credentials": {"secretName": "cvat-site-a"},
            "updatePolicy": "never",
        },
        "labelAliases": {"kitty": "cat"},
    }
    job = parse_job(
        with_spec(
            task="detection",
            model={"name": "centernet-tiny", "input": {"channels": 3, "height": 64, "width": 64}},
            sites=[
                {"name": "site-a", "data": live},
                {"name": "site-b", "data": {"cvatExport": {"path": "b.zip", "format": "coco-1.0"}}},
            ],
        ),
        source="test.yaml",
    )

    site_a = job.site_data("site-a")
    assert site_a.cvat is not None and site_a.cvat.task_ids == [3, 4]
    assert site_a.cvat.credentials.env_prefix == "CVAT_" and site_a.label_aliases == {
        "kitty": "cat"
    }
    assert job.spec.task == "detection"
    assert job.to_dict()["spec"]["sites"][0]["data"]["cvat"]["credentials"] == {
        "secretName": "cvat-site-a",
        "envPrefix": "CVAT_",
    }
    resolved = job.resolve_paths(Path("/jobs"))
    assert resolved.site_data("site-b").cvat_export.path == "/jobs/b.zip"  # type: ignore[union-attr]
    assert resolved.site_data("site-a") == site_a


def test_data_source_errors_name_the_field() -> None:
    both = {"cvatExport": {"path": "x"}, "cvat": {"url": "u", "taskIds": [1]}}
    assert "spec.sites[0].data: set one of cvatExport or cvat (got 'both')" in error_of(_site(both))
    assert "set one of cvatExport or cvat (got 'neither')" in error_of(_site({}))
    no_tasks = {"cvat": {"url": "u"}}
    assert "spec.sites[0].data.cvat.taskIds: set one of projectId or taskIds" in error_of(
        _site(no_tasks)
    )
    assert "spec.sites[0].data.cvat.taskIds[0]" in error_of(_site({"cvat": {"taskIds": [0]}}))
    assert "spec.sites[0].data.cvatExport.format" in error_of(
        _site({"cvatExport": {"path": "x", "format": "yolo"}})
    )
    live_test_data = with_spec(evaluation={"testData": {"cvat": {"url": "u", "taskIds": [1]}}})
    assert "spec.evaluation.testData.cvatExport" in error_of(live_test_data)


def test_the_detection_example_parses() -> None:
    from flotilla.api import load_job

    job = load_job(Path(__file__).parents[2] / "examples" / "shapes-detection.yaml")

    assert job.spec.task == "detection" and job.spec.model.name == "centernet-tiny"
    assert job.site_data("site-a").cvat_export is not None


def test_the_shapes_example_is_written_once_and_read_back(tmp_path: Path) -> None:
    from flotilla.data.shapes_example import write_shapes_example

    first = write_shapes_example(tmp_path, sites=["a", "b"], images_per_site=5, test_images=4)
    stamp = (tmp_path / "a" / "annotations.xml").stat().st_mtime_ns
    again = write_shapes_example(tmp_path, sites=["a", "b"], images_per_site=5, test_images=4)

    assert first == again and (tmp_path / "a" / "annotations.xml").stat().st_mtime_ns == stamp
    assert sum(first.boxes["a"]) >= 5 and first.test == 4
