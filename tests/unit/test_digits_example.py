"""The digits example: every image used once, a disjoint test split, label skew, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from flotilla.data.digits_example import write_digits_example

SITES = ["site-a", "site-b", "site-c"]


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("digits") / "digits"
    return out, write_digits_example(out, sites=SITES, alpha=0.5, seed=3)


def _frames(export: Path) -> list[str]:
    return sorted(p.name for p in (export / "images").iterdir())


def test_every_image_goes_to_exactly_one_place(example) -> None:
    out, written = example

    assert sum(written.sites.values()) + written.test == 1797
    for site in SITES:
        assert len(_frames(out / site)) == written.sites[site]
        assert sum(written.histograms[site]) == written.sites[site]
    assert len(_frames(out / "test")) == written.test


def test_the_test_split_is_stratified(example) -> None:
    out, written = example
    text = (out / "test" / "annotations.xml").read_text()

    counts = [text.count(f'label="{d}"') for d in range(10)]

    assert written.test == sum(counts)
    assert min(counts) >= 30  # about 20% of each digit's ~180 images


def test_sites_are_non_iid(example) -> None:
    _, written = example
    shares = {s: np.array(h) / sum(h) for s, h in written.histograms.items()}

    distances = [
        0.5 * np.abs(shares[a] - shares[b]).sum()
        for i, a in enumerate(SITES)
        for b in SITES[i + 1 :]
    ]

    assert max(distances) > 0.3


def test_the_seed_decides_the_partition(example, tmp_path: Path) -> None:
    _, written = example

    same = write_digits_example(tmp_path / "same", sites=SITES, alpha=0.5, seed=3)
    other = write_digits_example(tmp_path / "other", sites=SITES, alpha=0.5, seed=4)

    assert same.histograms == written.histograms
    assert other.histograms != written.histograms


def test_a_second_call_with_the_same_parameters_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "d"
    write_digits_example(out, sites=["a", "b"], seed=0)
    marker = out / "a" / "annotations.xml"
    stamp = marker.stat().st_mtime_ns
    digest = hashlib.sha256(marker.read_bytes()).hexdigest()

    write_digits_example(out, sites=["a", "b"], seed=0)
    assert marker.stat().st_mtime_ns == stamp

    write_digits_example(out, sites=["a", "b"], seed=1)
    assert hashlib.sha256(marker.read_bytes()).hexdigest() != digest


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sites": []}, "site names"),
        ({"sites": ["a", "a"]}, "unique"),
        ({"sites": ["a"], "alpha": 0}, "alpha"),
        ({"sites": ["a"], "test_fraction": 1.5}, "test_fraction"),
    ],
)
def test_bad_parameters_are_refused(tmp_path: Path, kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_digits_example(tmp_path / "x", **kwargs)
