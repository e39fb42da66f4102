"""What clients report, parsed and bounded: example counts, training and evaluation metrics,
and the label report a site sends with its data.

Every number is checked here, where it is parsed: out of bounds is refused naming the
field and the site, so nothing downstream (the fold, the ledger, /v1/history, the summary)
ever meets a value it cannot add, average or write as JSON. Unknown keys are refused too: what
a client may say is what the aggregator keeps, nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from flotilla.fl.aggregator.errors import BadExamples, BadMetrics, BadReport, Refused
from flotilla.fl.learning import SCORES

# Examples one client may claim: about 1.1e12, beyond any site. Bounded so that sums of
# loss * examples stay finite in float64 and examples * delta in the float32 fold (codec.py
# bounds each delta value by 1.8e19; 2**40 * 1.8e19 is 2e31, far below float32's 3.4e38).
MAX_EXAMPLES = 2**40
MAX_LOSS = 1e9  # finite and >= 0; a diverged model's loss is large, never this large
MAX_SECONDS = 1e7  # a duration: finite, >= 0, under 116 days
MAX_EPOCHS = 1e6
MAX_VERSION = 2**31  # model versions count rounds (spec: at most 100000)
MAX_NAME_CHARS = 256  # a label name in a site's report
MAX_ENTRIES = 10_000  # labels in one list or map (the spec allows 10000 labels)

_TRAIN_BOUNDS = {
    "loss": MAX_LOSS,
    "seconds": MAX_SECONDS,
    "epochs": MAX_EPOCHS,
    **dict.fromkeys(SCORES, 1.0),
}
_COUNTS = ("frames", "used", "unannotated", "ambiguous", "train", "holdout")


def examples_count(site: str, raw: str) -> int:
    """X-Flotilla-Examples: a positive integer up to MAX_EXAMPLES."""
    # str.isdigit() alone takes "²" and other Unicode digits that int() refuses.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 20) or not (
        0 < int(raw) <= MAX_EXAMPLES
    ):
        raise BadExamples(
            f"site {site!r}: X-Flotilla-Examples must be an integer in 1..{MAX_EXAMPLES}, "
            f"got {raw[:40]!r}",
        )
    return int(raw)


def checked_update_metrics(site: str, metrics: Any) -> dict[str, Any]:
    """X-Flotilla-Metrics: {"train": {...}, "eval": {...} or null}, each number bounded."""
    if not isinstance(metrics, dict):
        raise _bad(site, "X-Flotilla-Metrics", "must be a JSON object")
    _known_keys(site, "X-Flotilla-Metrics", metrics, ("train", "eval"))
    train = metrics.get("train", {})
    if not isinstance(train, dict):
        raise _bad(site, "train", "must be a JSON object")
    _known_keys(site, "train", train, tuple(_TRAIN_BOUNDS))
    for key, value in train.items():
        _number(site, f"train.{key}", value, high=_TRAIN_BOUNDS[key])
    evaluation = metrics.get("eval")
    if evaluation is not None:
        version = evaluation.get("modelVersion") if isinstance(evaluation, dict) else None
        if not _is_count(version, MAX_VERSION):
            raise _bad(site, "eval.modelVersion", f"{_show(version)} is not a model version")
        evaluation = checked_eval_report(site, evaluation, field="eval") | {"modelVersion": version}
    return {"train": dict(train), "eval": evaluation}


def checked_eval_report(site: str, report: Any, *, field: str = "evaluation") -> dict[str, Any]:
    """A hold-out evaluation: {"loss", "examples", and a score}; with 0 examples, no numbers."""
    if not isinstance(report, dict):
        raise _bad(site, field, "must be a JSON object")
    _known_keys(site, field, report, ("modelVersion", "loss", "examples", *SCORES))
    examples = report.get("examples")
    if not _is_count(examples, MAX_EXAMPLES):
        raise _bad(
            site, f"{field}.examples", f"{_show(examples)} is not a count in 0..{MAX_EXAMPLES}"
        )
    if examples == 0:  # nothing was evaluated: its loss and scores are NaN or null
        return {"loss": None, "examples": 0}
    loss = _number(site, f"{field}.loss", report.get("loss"), high=MAX_LOSS)
    scores = {
        key: _number(site, f"{field}.{key}", report[key], high=1.0)
        for key in SCORES
        if report.get(key) is not None
    }
    if not scores:
        raise _bad(site, f"{field}.{'|'.join(SCORES)}", f"an evaluation needs one of {SCORES}")
    return {"loss": loss, "examples": examples} | scores


def checked_label_report(site: str, data: Any) -> dict[str, Any]:
    """A ready site's label report (data/labels.py `LabelReport.as_metrics`, with its
    train and hold-out counts): known keys, counts, and bounded label names."""
    if not isinstance(data, dict):
        raise _bad(site, "data", "must be a JSON object", kind=BadReport)
    _known_keys(
        site,
        "data",
        data,
        ("ignoredLabels", "aliasedLabels", "missingLabels", *_COUNTS),
        kind=BadReport,
    )
    for key in _COUNTS:
        if key in data and not _is_count(data[key], MAX_EXAMPLES):
            raise _bad(site, f"data.{key}", f"{_show(data[key])} is not a count", kind=BadReport)
    _names(site, "ignoredLabels", data.get("ignoredLabels", {}), values="count")
    _names(site, "aliasedLabels", data.get("aliasedLabels", {}), values="name")
    _names(site, "missingLabels", data.get("missingLabels", []), values=None)
    return dict(data)


def _names(site: str, field: str, value: Any, *, values: str | None) -> None:
    """A list of label names (`values` None), or a map from names to counts or names."""
    ok = isinstance(value, list) if values is None else isinstance(value, dict)
    if ok and len(value) <= MAX_ENTRIES:
        items = value.items() if isinstance(value, dict) else ((name, None) for name in value)
        ok = all(
            _is_name(name)
            and (
                values is None
                or (values == "name" and _is_name(entry))
                or (values == "count" and _is_count(entry, MAX_EXAMPLES))
            )
            for name, entry in items
        )
    if not ok:
        shape = "a list" if values is None else f"a map of label names to {values}s"
        raise _bad(
            site,
            f"data.{field}",
            f"must be {shape}: at most {MAX_ENTRIES} entries, names of 1..{MAX_NAME_CHARS} chars",
            kind=BadReport,
        )


def _number(site: str, field: str, value: Any, *, high: float) -> float:
    """A finite JSON number in [0, high]; ints beyond float's range are refused, not raised."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            if math.isfinite(value) and 0 <= value <= high:
                return value
        except OverflowError:  # a JSON integer beyond float's range
            pass
    raise _bad(site, field, f"{_show(value)} is not a finite number in [0, {high:g}]")


def _known_keys(
    site: str,
    field: str,
    value: Mapping[str, Any],
    known: tuple[str, ...],
    *,
    kind: type[Refused] = BadMetrics,
) -> None:
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise _bad(
            site,
            f"{field}.{unknown[0][:40]}",
            f"is not a known key (known: {', '.join(known)})",
            kind=kind,
        )


def _is_count(value: Any, high: int) -> bool:
    """A JSON integer (not a bool) in 0..high."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= high


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS


def _show(value: Any) -> str:
    """A reported value for a message: short, whatever its size."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**20:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(site: str, field: str, problem: str, *, kind: type[Refused] = BadMetrics) -> Refused:
    return kind(f"site {site!r}: {field} {problem}")
