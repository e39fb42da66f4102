"""Hostile job files: each is refused quickly with a SpecError naming the line or the field
and the value, never a traceback, a hang or a job that fails only once it runs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flotilla.api import SpecError, load_job
from flotilla.api import loader as loader_module
from flotilla.api.loader import LOADERS, MAX_ALIAS_NODES, MAX_DEPTH, MAX_FILE_BYTES

HEAD = """\
apiVersion: flotilla.dev/v1alpha1
kind: FederatedJob
metadata: {name: job}
spec:
  rounds: 3
  model: {name: mlp, input: {height: 8, width: 8}}
"""
LABELS = "  labels: [cat, dog]\n"


@pytest.fixture(autouse=True, params=LOADERS, ids=lambda loader: loader.__name__)
def yaml_loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> type:
    """Each test with libyaml's parser and with PyYAML's own: the bounds hold for both."""
    monkeypatch.setattr(loader_module, "LOADERS", [request.param])
    loader: type = request.param
    return loader


def refusal(tmp_path: Path, text: str) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        load_job(path)
    message = str(caught.value)
    assert str(path) in message
    return message


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["    a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        aliases = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"    a{level}: &a{level} [{aliases}]")
    return HEAD + "  bomb:\n" + "\n".join(lines) + f"\n  labels: *a{levels - 1}\n"


@pytest.mark.parametrize(
    ("key", "kind"), [("[a, b]", "a sequence"), ("{a: 1}", "a mapping")], ids=["list", "dict"]
)
def test_a_collection_as_a_mapping_key_names_its_line(tmp_path: Path, key: str, kind: str) -> None:
    message = refusal(tmp_path, HEAD + LABELS + f"  ? {key}\n  : 1\n")

    assert "line 8, column 5" in message
    assert f"mapping key is {kind} ({key})" in message


def test_an_alias_bomb_is_refused_in_milliseconds(tmp_path: Path) -> None:
    text = _alias_bomb()
    assert len(text) < 1024

    started = time.perf_counter()
    message = refusal(tmp_path, text)
    elapsed = time.perf_counter() - started

    assert elapsed < 1.0
    # a4 stands for 66430 nodes: the first *a4 in a5's list passes the bound.
    assert f"line 13, column 14: alias *a4 expands the document past {MAX_ALIAS_NODES}" in message


def test_a_merge_key_bomb_is_refused_too(tmp_path: Path) -> None:
    lines = ["    m0: &m0 {a: 1, b: 2}"]
    lines += [f"    m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}]}}" for i in range(1, 40)]
    text = HEAD + LABELS + "  bomb:\n" + "\n".join(lines) + "\n"

    started = time.perf_counter()
    message = refusal(tmp_path, text)

    assert time.perf_counter() - started < 1.0
    assert "expands the document past" in message


def test_aliases_that_share_a_data_source_among_sites_are_fine(tmp_path: Path) -> None:
    sites = "\n".join(f"    - name: site-{i}\n      data: *shared" for i in range(1, 200))
    text = (
        HEAD
        + LABELS
        + "  sites:\n    - name: site-0\n      data: &shared {cvatExport: {path: /data}}\n"
        + sites
        + "\n"
    )
    path = tmp_path / "job.yaml"
    path.write_text(text)

    job = load_job(path)

    assert job.site_data("site-199").cvat_export is not None


def test_merge_keys_work_as_kubectl_reads_them(tmp_path: Path) -> None:
    text = (
        HEAD
        + LABELS
        + "  training: &t {batchSize: 8, learningRate: 0.1}\n"
        + "  clients:\n    <<: {minClients: 2, perRound: 2}\n    perRound: 3\n"
    )
    path = tmp_path / "job.yaml"
    path.write_text(text)

    spec = load_job(path).spec

    assert (spec.clients.min_clients, spec.clients.per_round) == (2, 3)


def test_a_duplicate_key_next_to_a_merge_is_still_refused(tmp_path: Path) -> None:
    text = HEAD + LABELS + "  clients:\n    <<: {minClients: 2}\n    perRound: 3\n    perRound: 4\n"

    assert "duplicate key 'perRound'" in refusal(tmp_path, text)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5000])
def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path: Path, depth: int) -> None:
    message = refusal(tmp_path, HEAD + LABELS + "  x: " + "[" * depth + "]" * depth + "\n")

    assert "line 8" in message
    # libyaml stops at 1000 levels with its own message, before the loader's bound.
    bound = f"nested deeper than {MAX_DEPTH} levels"
    assert bound in message or "exceeded maximum nesting depth" in message


def test_a_file_past_the_size_bound_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    text = HEAD + LABELS + "#" * MAX_FILE_BYTES + "\n"

    started = time.perf_counter()
    message = refusal(tmp_path, text)

    assert time.perf_counter() - started < 1.0
    assert f"larger than {MAX_FILE_BYTES} bytes" in message


@pytest.mark.parametrize(
    ("scalar", "expected"),
    [
        ("2024-13-45", "line 8, column 6: cannot read '2024-13-45'"),
        ("1" * 5000, "line 8, column 6: cannot read '11111111111"),
    ],
    ids=["bad-date", "huge-int"],
)
def test_scalars_python_cannot_build_name_their_line(
    tmp_path: Path, scalar: str, expected: str
) -> None:
    assert expected in refusal(tmp_path, HEAD + LABELS + f"  x: {scalar}\n")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # YAML reads a bare inf or 1e29 as a string; a number field is no place for one.
        (
            "  training: {weightDecay: inf}",
            "spec.training.weightDecay: must be a number, not a string (got 'inf')",
        ),
        (
            "  training: {weightDecay: .inf}",
            "spec.training.weightDecay: Input should be a finite number (got inf)",
        ),
        (
            "  clients: {roundDeadlineSeconds: .inf}",
            "spec.clients.roundDeadlineSeconds: Input should be a finite number (got inf)",
        ),
        (
            "  clients: {joinGraceSeconds: .inf}",
            "spec.clients.joinGraceSeconds: Input should be a finite number (got inf)",
        ),
        (
            "  clients: {joinGraceSeconds: .nan}",
            "spec.clients.joinGraceSeconds: Input should be a finite number (got nan)",
        ),
        (
            "  clients: {roundDeadlineSeconds: 604801}",
            "spec.clients.roundDeadlineSeconds: Input should be less than or equal to 604800 "
            "(got 604801)",
        ),
        (
            "  seed: 1e29",
            "spec.seed: must be an integer, not a string (got '1e29')",
        ),
        (
            "  seed: 1.0e+29",
            "spec.seed: must be an integer, not a decimal number (got 1e+29)",
        ),
        (
            "  seed: 100000000000000000000000000000",
            "spec.seed: Input should be less than or equal to 4294967295 "
            "(got 100000000000000000000000000000)",
        ),
        (
            "  clients: {minClients: true}",
            "spec.clients.minClients: must be an integer, not a boolean (got True)",
        ),
        (
            "  training: {learningRate: true}",
            "spec.training.learningRate: must be a number, not a boolean (got True)",
        ),
        (
            '  rounds: "3"',
            "spec.rounds: must be an integer, not a string (got '3')",
        ),
    ],
)
def test_numbers_must_be_finite_bounded_numbers(tmp_path: Path, line: str, expected: str) -> None:
    text = HEAD.replace("  rounds: 3\n", "") + LABELS + line + "\n"
    if "rounds" not in line:
        text += "  rounds: 3\n"

    assert expected in refusal(tmp_path, text)
