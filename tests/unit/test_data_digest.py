"""A site's data digest: what changes it (annotations, files, CVAT task updates) and what
does not (where the export lies, reading it twice), and the probe's command line."""

from __future__ import annotations

import argparse
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flotilla.api import FederatedJob
from flotilla.cli.data_digest import add_digest_parser
from flotilla.data import DataSourceError
from flotilla.data.digest import data_digest, export_digest
from flotilla.k8s.schedule_views import DIGEST
from tests.unit.cvat_double import CvatDouble, FakeTask

PASSWORD_ENV = {"CVAT_USERNAME": "alice", "CVAT_PASSWORD": "s3cret"}


def _export(root: Path, annotations: str = "<annotations/>") -> Path:
    (root / "images" / "Train").mkdir(parents=True)
    (root / "annotations.xml").write_text(annotations)
    (root / "images" / "Train" / "0.png").write_bytes(b"\x89PNG pixels")
    return root


def _job(source: dict[str, Any], site: str = "site-a") -> FederatedJob:
    return FederatedJob.from_dict(
        {
            "apiVersion": "flotilla.dev/v1alpha1",
            "kind": "FederatedJob",
            "metadata": {"name": "digits"},
            "spec": {
                "rounds": 1,
                "labels": ["cat", "dog"],
                "model": {"name": "mlp", "input": {"height": 8, "width": 8}},
                "sites": [{"name": site, "data": source}],
            },
        }
    )


def test_an_export_has_one_digest_wherever_it_lies(tmp_path: Path) -> None:
    here = export_digest(_export(tmp_path / "a"))
    there = export_digest(_export(tmp_path / "b"))
    assert here == there == export_digest(tmp_path / "a")
    assert DIGEST.match(here), "the operator takes it as a digest"


def test_new_annotations_or_images_change_the_digest(tmp_path: Path) -> None:
    root = _export(tmp_path / "a")
    before = export_digest(root)
    (root / "annotations.xml").write_text("<annotations><image/></annotations>")
    edited = export_digest(root)
    (root / "images" / "Train" / "1.png").write_bytes(b"")
    added = export_digest(root)
    assert len({before, edited, added}) == 3


def test_past_the_budget_only_names_and_sizes_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _export(tmp_path / "a")
    monkeypatch.setattr("flotilla.data.digest.MAX_HASHED_BYTES", 0)
    before = export_digest(root)
    (root / "annotations.xml").write_text("<annotations!>")  # same size
    assert export_digest(root) == before
    (root / "annotations.xml").write_text("<annotations!!>")
    assert export_digest(root) != before


def test_a_zip_is_hashed_as_it_is(tmp_path: Path) -> None:
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as writer:
        writer.writestr("annotations.xml", "<annotations/>")
    job = _job({"cvatExport": {"path": str(archive)}})
    assert data_digest(job, "site-a") == export_digest(archive)


def test_a_mounted_export_is_read_where_it_is_mounted(tmp_path: Path) -> None:
    mounted = _export(tmp_path / "mnt")
    job = _job({"cvatExport": {"path": "/var/lib/flotilla/digits"}})
    assert data_digest(job, "site-a", data=mounted) == export_digest(mounted)
    with pytest.raises(DataSourceError, match="not found"):
        data_digest(job, "site-a")


@pytest.fixture
def cvat() -> Iterator[CvatDouble]:
    double = CvatDouble()
    for task_id in (7, 8):
        double.tasks[task_id] = FakeTask(id=task_id, labels=[(1, "cat")], frames=[], project_id=3)
    double.start()
    yield double
    double.stop()


def test_a_live_cvat_digest_follows_its_tasks_updates(cvat: CvatDouble) -> None:
    by_tasks = _job({"cvat": {"url": cvat.url, "taskIds": [8, 7]}})
    by_project = _job({"cvat": {"url": cvat.url, "projectId": 3}})
    first = data_digest(by_tasks, "site-a", environ=PASSWORD_ENV)
    assert data_digest(by_project, "site-a", environ=PASSWORD_ENV) == first
    assert DIGEST.match(first)

    cvat.tasks[8].updated = "2024-06-01T08:00:00.000000Z"  # an annotator saved task 8
    assert data_digest(by_tasks, "site-a", environ=PASSWORD_ENV) != first


def test_a_live_cvat_that_refuses_says_so_without_the_password(cvat: CvatDouble) -> None:
    job = _job({"cvat": {"url": cvat.url, "taskIds": [7]}})
    wrong = {"CVAT_USERNAME": "alice", "CVAT_PASSWORD": "nope"}
    with pytest.raises(DataSourceError, match="credentials were refused") as caught:
        data_digest(job, "site-a", environ=wrong)
    assert "nope" not in str(caught.value)


def _command(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flotilla")
    add_digest_parser(parser.add_subparsers())
    return parser.parse_args(["digest", *argv])


def test_the_command_writes_the_digest_to_the_termination_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _export(tmp_path / "export")
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(_job({"cvatExport": {"path": "/nowhere"}}).to_dict()))
    log = tmp_path / "termination-log"
    args = _command(
        [str(job_file), "--site", "site-a", f"--data={root}", f"--termination-log={log}"]
    )

    assert args.handler(args) == 0
    assert log.read_text() == export_digest(root)
    assert capsys.readouterr().out.strip() == export_digest(root)

    missing = _command([str(job_file), "--site", "site-a", f"--termination-log={log}"])
    assert missing.handler(missing) == 1
    assert log.read_text().startswith("site site-a: export /nowhere: not found")

    unknown = _command([str(job_file), "--site", "site-z", f"--termination-log={log}"])
    assert unknown.handler(unknown) == 2
    assert "site 'site-z' is not listed" in log.read_text()
