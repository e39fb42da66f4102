"""The getting-started data: scikit-learn's digits as one CVAT export per site.

Sites get a non-IID share (label skew from a seeded Dirichlet per class, the
usual federated benchmark partition) and a stratified test split is kept apart
for the aggregator. scikit-learn ships the images: nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from flotilla.data.cvat_writer import write_cvat_images_export

MIN_SITE_SAMPLES = 20
PARAMETERS_FILE = "flotilla-example.json"
README = """scikit-learn's digits (a copy of the UCI ML hand-written digits test set, CC BY 4.0),
written by `flotilla examples digits` as one "CVAT for images 1.1" export per site,
split non-IID by label, plus `test/`, a held-out split that no site trains on.
"""


@dataclass(frozen=True)
class DigitsExample:
    sites: dict[str, int]  # samples per site
    histograms: dict[str, list[int]]  # per site: samples of each digit
    test: int

    def __str__(self) -> str:
        per_site = ", ".join(f"{s} {n}" for s, n in self.sites.items())
        return f"{per_site}; test {self.test}"


def write_digits_example(
    out_dir: Path,
    *,
    sites: Sequence[str],
    alpha: float = 0.5,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> DigitsExample:
    if not sites or len(set(sites)) != len(sites):
        raise ValueError(f"site names must be given and unique, got {list(sites)}")
    if alpha <= 0 or not 0 < test_fraction < 1:
        raise ValueError(f"need alpha > 0 and 0 < test_fraction < 1, got {alpha}, {test_fraction}")
    parameters = {"sites": list(sites), "alpha": alpha, "testFraction": test_fraction, "seed": seed}
    marker = out_dir / PARAMETERS_FILE
    if marker.exists():
        stored = json.loads(marker.read_text())
        if stored.get("parameters") == parameters:
            return DigitsExample(**stored["example"])
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise RuntimeError(
            "the digits example needs scikit-learn: pip install 'flotilla[examples]'"
        ) from None
    digits = load_digits()
    pixels = (digits.images * (255 / 16)).round().astype(np.uint8)
    targets = digits.target.astype(int)
    rng = np.random.default_rng(seed)
    test, rest = _stratified_split(targets, test_fraction, rng)
    shares = _dirichlet_partition(targets[rest], len(sites), alpha, rng)
    labels = [str(d) for d in range(10)]
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    write_cvat_images_export(
        out_dir / "test",
        labels=labels,
        task_name="digits-test",
        samples=((pixels[i], str(targets[i]), "Test") for i in test),
    )
    for site, share in zip(sites, shares, strict=True):
        rows = rest[share]
        write_cvat_images_export(
            out_dir / site,
            labels=labels,
            task_name=f"digits-{site}",
            samples=((pixels[i], str(targets[i]), None) for i in rows),
        )
    example = DigitsExample(
        sites={s: len(share) for s, share in zip(sites, shares, strict=True)},
        histograms={
            s: np.bincount(targets[rest[share]], minlength=10).tolist()
            for s, share in zip(sites, shares, strict=True)
        },
        test=len(test),
    )
    (out_dir / "README.txt").write_text(README)
    marker.write_text(json.dumps({"parameters": parameters, "example": asdict(example)}))
    return example


def _stratified_split(
    targets: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    test: list[int] = []
    for label in np.unique(targets):
        rows = rng.permutation(np.flatnonzero(targets == label))
        test.extend(rows[: round(len(rows) * fraction)])
    chosen = np.zeros(len(targets), dtype=bool)
    chosen[test] = True
    return np.flatnonzero(chosen), np.flatnonzero(~chosen)


def _dirichlet_partition(
    targets: np.ndarray, sites: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per class, a Dirichlet(alpha) draw says how that class's samples spread over sites."""
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(sites)]
        for label in np.unique(targets):
            rows = rng.permutation(np.flatnonzero(targets == label))
            cuts = (np.cumsum(rng.dirichlet([alpha] * sites)) * len(rows)).astype(int)[:-1]
            for site, chunk in enumerate(np.split(rows, cuts)):
                parts[site].extend(chunk.tolist())
        if min(len(p) for p in parts) >= MIN_SITE_SAMPLES:
            return [np.array(sorted(p), dtype=int) for p in parts]
    raise ValueError(f"cannot give each of {sites} sites {MIN_SITE_SAMPLES} samples")
