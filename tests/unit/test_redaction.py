"""Credentials in URLs: refused in the spec's cvat.url, redacted wherever text is shown or stored.

The rule (flotilla.redaction) on free text; every log record once the CLI has started; the
spec's errors; what the aggregator keeps of a site's error (/v1/status, the summary); the
MLflow params; a live-CVAT error that echoes its URL.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from flotilla.api import CvatServerSource
from flotilla.cli import EXIT_USAGE, main
from flotilla.data import DataSourceError
from flotilla.data.cvat_live import read_cvat_frames
from flotilla.redaction import install_log_redaction, redact_urls
from flotilla.tracking.plan import job_params
from tests.inprocess import aggregator, digits_job
from tests.unit.test_spec import error_of, with_spec

PASSWORD = "Pw-4n8Kq2Zr"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://bob:PW@cvat.example/api", "https://***@cvat.example/api"),
        ("http://bob:PW@cvat:8080", "http://***@cvat:8080"),
        ("https://TOKEN@cvat.example", "https://***@cvat.example"),  # a token alone
        ("http://u:p@[::1]:8080/x", "http://***@[::1]:8080/x"),  # IPv6
        ("https://bob:p@ss@cvat.example/", "https://***@cvat.example/"),  # the last @ ends it
        ("postgresql+psycopg://u:p@db:5432/m", "postgresql+psycopg://***@db:5432/m"),
        (
            "CVAT https://a:1@x, task 7: see 'http://b:2@y:9/z?q=c@d' and http://z/",
            "CVAT https://***@x, task 7: see 'http://***@y:9/z?q=c@d' and http://z/",
        ),
        ("url=https://bob:PW@h\nnext line", "url=https://***@h\nnext line"),
    ],
)
def test_the_userinfo_of_every_url_in_a_text_is_redacted(text: str, expected: str) -> None:
    assert redact_urls(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "write to bob@example.org",  # an address, no scheme
        "mailto:bob@example.org",
        "https://cvat.example/users/bob@example.org",  # an @ in the path
        "https://cvat.example/?email=bob@example.org",
        "sqlite:////tmp/mlflow.db",
        "https://@cvat.example",  # nothing to hide
        "",
    ],
)
def test_text_without_url_credentials_is_left_alone(text: str) -> None:
    assert redact_urls(text) == text


def test_a_long_text_is_redacted_in_linear_time() -> None:
    text = "a" * 200_000 + "://" + "b" * 200_000 + " https://u:p@h"
    assert redact_urls(text).endswith(" https://***@h")


@pytest.fixture
def redacted_logs() -> Iterator[None]:
    factory, hook = logging.getLogRecordFactory(), sys.excepthook
    install_log_redaction()
    install_log_redaction()  # idempotent
    yield
    logging.setLogRecordFactory(factory)
    sys.excepthook = hook


def test_every_log_record_is_redacted_whatever_logs_it(redacted_logs: None) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    # A logger of its own that does not propagate, as MLflow's: a root filter would miss it.
    lonely = logging.getLogger("test_redaction.lonely")
    lonely.addHandler(handler)
    lonely.propagate = False
    try:
        lonely.warning("CVAT %s, task %d: refused", f"https://bob:{PASSWORD}@cvat:8080", 7)
        lonely.error(f"plain https://{PASSWORD}@cvat.example/api")
        try:
            raise ValueError(f"cannot reach http://bob:{PASSWORD}@[::1]:8080/api")
        except ValueError:
            lonely.exception("reading the site's data failed")
        lonely.info("a %s placeholder without %s", "x")  # bad args: logging's own complaint
    finally:
        lonely.removeHandler(handler)
    shown = stream.getvalue()
    assert "CVAT https://***@cvat:8080, task 7: refused" in shown
    assert "plain https://***@cvat.example/api" in shown
    assert "cannot reach http://***@[::1]:8080/api" in shown
    assert PASSWORD not in shown


def test_an_uncaught_exception_is_printed_redacted(
    redacted_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        raise RuntimeError(f"cannot reach https://bob:{PASSWORD}@cvat.example")
    except RuntimeError as error:
        sys.excepthook(type(error), error, error.__traceback__)
    err = capsys.readouterr().err
    assert "RuntimeError: cannot reach https://***@cvat.example" in err and "Traceback" in err
    assert PASSWORD not in err


def test_the_cli_refuses_a_cvat_url_with_a_password_and_redacts_its_logs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    factory, hook = logging.getLogRecordFactory(), sys.excepthook
    live = {"cvat": {"url": f"https://bob:{PASSWORD}@cvat.example", "taskIds": [1]}}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(with_spec(sites=[{"name": "site-a", "data": live}])))
    try:
        assert main(["validate", str(job)]) == EXIT_USAGE
        logging.getLogger("flotilla.test").warning("at https://bob:%s@cvat", PASSWORD)
    finally:
        logging.setLogRecordFactory(factory)
        sys.excepthook = hook
    err = capsys.readouterr().err
    assert "spec.sites[0].data.cvat.url: " in err and "credentials" in err
    assert "at https://***@cvat" in caplog.text
    assert PASSWORD not in err + caplog.text


@pytest.mark.parametrize(
    "url",
    [
        f"https://bob:{PASSWORD}@cvat.example",
        f"http://{PASSWORD}@cvat.example:8080/",
        f"https://bob:{PASSWORD}/x@cvat.example",  # an unencoded "/" in the password
    ],
)
def test_a_cvat_url_with_credentials_is_refused_naming_the_field(url: str) -> None:
    live = {"cvat": {"url": url, "taskIds": [1]}}
    error = error_of(with_spec(sites=[{"name": "site-a", "data": live}]))

    assert "spec.sites[0].data.cvat.url: holds credentials" in error
    assert "credentials.path" in error and "credentials.secretName" in error
    assert PASSWORD not in error


def test_a_spec_error_never_echoes_url_credentials() -> None:
    wrong = {"cvat": f"https://bob:{PASSWORD}@cvat.example"}  # a string, not a mapping
    error = error_of(with_spec(sites=[{"name": "site-a", "data": wrong}]))

    assert "spec.sites[0].data.cvat" in error and "https://***@cvat.example" in error
    assert PASSWORD not in error


def test_a_site_error_with_a_url_is_kept_redacted_in_status_and_summary(tmp_path: Path) -> None:
    error = f"CVAT https://bob:{PASSWORD}@cvat.example:8080, task 7: unreachable"

    async def play() -> tuple[dict[str, str], dict[str, object]]:
        async with aggregator(digits_job(["site-a"], rounds=1), tmp_path, run=False) as served:
            report = json.dumps({"ready": False, "error": error}).encode()
            code, body = await served.request("POST", "/v1/site-report", site="site-a", data=report)
            assert code == 200, body
            _, body = await served.request("GET", "/v1/status")
            return json.loads(body)["siteErrors"], served.engine.summary()

    site_errors, summary = asyncio.run(play())
    shown = "CVAT https://***@cvat.example:8080, task 7: unreachable"
    assert site_errors == {"site-a": shown}
    assert json.dumps(summary).count(shown) == 1 and PASSWORD not in json.dumps(summary)


def test_mlflow_params_hold_no_url_credentials_under_any_key() -> None:
    live = {"cvat": {"url": f"https://bob:{PASSWORD}@cvat.example", "taskIds": [1]}}
    job = {"metadata": {"name": "j"}, "spec": {"sites": [{"name": "a", "data": live}]}}

    params = job_params(job)

    assert params["sites.a.data.cvat.url"] == "https://***@cvat.example"
    assert PASSWORD not in json.dumps(params)


def test_a_live_cvat_error_does_not_echo_the_credentials_in_its_url(tmp_path: Path) -> None:
    source = CvatServerSource.model_validate({"taskIds": [1]})
    environ = {
        "CVAT_URL": f"http://bob:{PASSWORD}@127.0.0.1:9",
        "CVAT_USERNAME": "alice",
        "CVAT_PASSWORD": "s3cret",
    }
    with pytest.raises(DataSourceError, match=r"CVAT http://\*\*\*@127.0.0.1:9.*unreachable") as e:
        read_cvat_frames(site="a", source=source, cache_dir=tmp_path, environ=environ)
    assert PASSWORD not in str(e.value)
