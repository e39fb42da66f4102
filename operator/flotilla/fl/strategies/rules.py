"""Aggregation rules: how one round's client deltas become one aggregated delta.

`WeightedMean` streams (FedAvg's rule: one model of memory whatever the number of
clients). The robust rules (`CoordinateMedian`, `TrimmedMean`, `Krum`) need every
delta at once, so they keep a float32 copy of each; they ignore client weights,
because a Byzantine client could claim any example count.

The coordinate-wise rules can, on request (`mean_of_nearest`), return per coordinate
the mean of the values nearest their median or trimmed mean instead of that value
itself: "mean around median" (MeaMed) and Phocas, Xie, Koyejo and Gupta 2018.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from flotilla.fl.strategies.base import (
    AggregationError,
    MutableTensorMap,
    RoundAggregate,
    TensorMap,
)
from flotilla.fl.wire import flat_pair

_DeltaList = list[dict[str, torch.Tensor]]
# float32 values per operation of a flat fold: large enough that a model of small tensors
# takes a few operations, small enough that the fence of a buffer handed on
# (aggregator/fence.py) moves as a large tensor is read.
FOLD_PIECE = 1 << 20


def _check_delta(out: TensorMap, delta: TensorMap) -> None:
    """Refuse a delta whose layout is not `out`'s, before anything is folded.

    Checked up front because `add_` would broadcast a wrong shape silently and a
    half-folded delta could not be taken back out of the streaming buffer.
    """
    if delta.keys() != out.keys():
        missing = sorted(out.keys() - delta.keys())
        extra = sorted(delta.keys() - out.keys())
        raise AggregationError(f"delta layout differs: missing {missing}, unexpected {extra}")
    for name, target in out.items():
        if delta[name].shape != target.shape:
            raise AggregationError(
                f"delta tensor {name!r} has shape {tuple(delta[name].shape)}, "
                f"expected {tuple(target.shape)}"
            )


class _Round:
    """Bookkeeping shared by every rule's round: the count and the finished guard."""

    def __init__(self, out: MutableTensorMap) -> None:
        self._out = out
        self._count = 0
        self._finished = False

    @property
    def count(self) -> int:
        return self._count

    def _start_add(self, delta: TensorMap) -> None:
        if self._finished:
            raise AggregationError("round already finished: no more updates can be added")
        _check_delta(self._out, delta)

    def _start_finish(self) -> None:
        if self._finished:
            # A second finish would, for example, divide the weighted mean twice.
            raise AggregationError("round already finished")
        if self._count == 0:
            raise AggregationError("no updates to aggregate")
        self._finished = True


class _WeightedMeanRound(_Round):
    def __init__(self, out: MutableTensorMap) -> None:
        super().__init__(out)
        self._total_weight = 0.0
        # Weights uploads fold the weights; their `minus` (the global model) is taken
        # off once, at finish, with the summed coefficients: one pass per round, not
        # one more per upload. Subtracting two large sums costs precision: the mean
        # delta's error is about sqrt(clients) float32 ulps of the weights rather than
        # one (a check over 1M values, 4 clients: 4.6e-8 at most against 1.5e-8, weights
        # near 0.1; tests/unit/test_strategies.py bounds it). Folding
        # weights - global a cache-sized piece at a time (bit for bit the delta path)
        # read the global model once per upload: 10M x 8 clients, round overhead
        # 0.29 s -> 0.35 s, so not that.
        self._minus: TensorMap | None = None
        self._minus_coefficients = dict.fromkeys(out, 0.0)
        self._flat_ends: list[tuple[int, str]] | None = None

    def add(
        self,
        delta: TensorMap,
        *,
        weight: float,
        scales: Mapping[str, float],
        minus: TensorMap | None = None,
        release: Callable[[str], None] | None = None,
    ) -> None:
        if not math.isfinite(weight) or weight < 0:
            raise AggregationError(f"weight must be finite and >= 0, got {weight}")
        self._start_add(delta)
        if minus is not None:
            if self._minus is not None and minus is not self._minus:
                raise AggregationError("weights of one round must be against one global model")
            self._minus = minus
        if not self._fold_whole(delta, weight=weight, scales=scales, release=release):
            for name, target in self._out.items():
                # add_ reads float16 and int8 `other` into the float32 target directly,
                # so the delta is folded without a dequantized copy.
                target.add_(delta[name], alpha=weight * scales.get(name, 1.0))
                if release is not None:
                    release(name)
        if minus is not None:
            for name in self._out:
                self._minus_coefficients[name] += weight * scales.get(name, 1.0)
        self._total_weight += weight
        self._count += 1

    def _fold_whole(
        self,
        delta: TensorMap,
        *,
        weight: float,
        scales: Mapping[str, float],
        release: Callable[[str], None] | None,
    ) -> bool:
        """Fold through the flat views (wire.TensorViews) when both sides have one and every
        tensor takes one coefficient: a piece of FOLD_PIECE values per operation, not a
        tensor, releasing each tensor once the pieces are past its end. False: not done."""
        coefficients = {scales.get(name, 1.0) for name in self._out}
        pair = flat_pair(self._out, delta) if len(coefficients) == 1 else None
        if pair is None:
            return False
        out, flat = pair
        coefficient = weight * coefficients.pop()
        ends = self._ends()
        done = 0
        for start in range(0, out.numel(), FOLD_PIECE):
            end = min(start + FOLD_PIECE, out.numel())
            out[start:end].add_(flat[start:end], alpha=coefficient)
            while done < len(ends) and ends[done][0] <= end:
                if release is not None:
                    release(ends[done][1])
                done += 1
        return True

    def _ends(self) -> list[tuple[int, str]]:
        """Where each tensor of `out` ends in its flat view, in order."""
        if self._flat_ends is None:
            position, self._flat_ends = 0, []
            for name, tensor in self._out.items():
                position += tensor.numel()
                self._flat_ends.append((position, name))
        return self._flat_ends

    @property
    def total_weight(self) -> float:
        """The weights added so far (what `finish` divides by)."""
        return self._total_weight

    def finish(self) -> None:
        self._start_finish()
        if self._total_weight <= 0:
            raise AggregationError(f"total weight is {self._total_weight}: nothing to average")
        for name, target in self._out.items():
            if self._minus is not None and self._minus_coefficients[name]:
                target.sub_(self._minus[name], alpha=self._minus_coefficients[name])
            target.div_(self._total_weight)
        self._minus = None


class WeightedMean:
    """FedAvg's rule: the mean of the deltas weighted by the clients' example counts."""

    name: str = "weighted_mean"

    @property
    def streaming(self) -> bool:
        return True

    def begin(self, out: MutableTensorMap) -> RoundAggregate:
        return _WeightedMeanRound(out)

    def resume(self, out: MutableTensorMap, *, total_weight: float, count: int) -> RoundAggregate:
        """Go on with a sum written down earlier: `out` holds the weighted deltas folded so
        far (not divided yet), `total_weight` their weights, `count` how many (buffered
        aggregation resumes its buffer after a restart this way; weights uploads excluded)."""
        if not math.isfinite(total_weight) or total_weight < 0 or count < 0:
            raise AggregationError(f"cannot resume a sum of weight {total_weight}, {count} deltas")
        aggregate = _WeightedMeanRound(out)
        aggregate._total_weight, aggregate._count = total_weight, count
        return aggregate

    def min_updates(self) -> int:
        return 1


class _CollectingRound(_Round):
    """A round that keeps a float32, dequantized copy of every delta until `finish`."""

    def __init__(self, out: MutableTensorMap) -> None:
        super().__init__(out)
        self._deltas: _DeltaList = []

    def add(
        self,
        delta: TensorMap,
        *,
        weight: float,
        scales: Mapping[str, float],
        minus: TensorMap | None = None,
        release: Callable[[str], None] | None = None,
    ) -> None:
        del weight  # robust rules are unweighted: a client's claimed count is not trusted
        self._start_add(delta)
        copy: dict[str, torch.Tensor] = {}
        for name in self._out:
            # A new tensor either way: the delta may be a view into a receive buffer
            # that is reused.
            if minus is not None:
                tensor = torch.sub(delta[name].to(torch.float32), minus[name])
            else:
                tensor = delta[name].to(dtype=torch.float32, copy=True)
            if release is not None:
                release(name)
            scale = scales.get(name, 1.0)
            if scale != 1.0:
                tensor.mul_(scale)
            copy[name] = tensor
        self._deltas.append(copy)
        self._count += 1

    def finish(self) -> None:
        self._start_finish()
        self._combine(self._deltas)
        self._deltas = []  # the copies are the round's whole memory cost: drop them now

    def _stacked(self, name: str, deltas: _DeltaList) -> torch.Tensor:
        return torch.stack([d[name] for d in deltas])

    def _combine(self, deltas: _DeltaList) -> None:
        raise NotImplementedError


def _mean_of_nearest(ordered: torch.Tensor, target: torch.Tensor, *, keep: int) -> None:
    """Replace each coordinate of `target` by the mean of the `keep` values nearest it.

    `ordered` holds the n values of every coordinate sorted along dim 0. The `keep` values
    nearest a point are `keep` consecutive ones in sorted order: of the n - keep + 1
    windows, the one whose farthest value is nearest. A tie goes to the lower window
    (argmin-like: only a strictly nearer window replaces it), so the result is
    deterministic. Memory: a few tensors the size of one coordinate row, no indices per value.
    """
    n = ordered.shape[0]
    if keep == n:
        torch.mean(ordered, dim=0, out=target)
        return
    centre = target.clone()
    best = torch.maximum(centre - ordered[0], ordered[keep - 1] - centre)
    start = torch.zeros_like(centre, dtype=torch.int64)
    for first in range(1, n - keep + 1):
        reach = torch.maximum(centre - ordered[first], ordered[first + keep - 1] - centre)
        nearer = reach < best
        start.masked_fill_(nearer, first)
        torch.minimum(best, reach, out=best)
    target.zero_()
    for offset in range(keep):
        target.add_(ordered.gather(0, (start + offset).unsqueeze(0)).squeeze(0))
    target.div_(keep)


class _MedianRound(_CollectingRound):
    def __init__(self, out: MutableTensorMap, *, mean_of_nearest: bool) -> None:
        super().__init__(out)
        self._mean_of_nearest = mean_of_nearest

    def _combine(self, deltas: _DeltaList) -> None:
        n = len(deltas)
        # MeaMed: the median tolerates up to (n - 1) // 2 hostile values; the rest are kept.
        keep = n - (n - 1) // 2
        for name, target in self._out.items():
            ordered = self._stacked(name, deltas).sort(dim=0).values
            # torch.median takes the lower middle value; numpy's (and FedMedian's)
            # mean of the two middle values is the symmetric choice.
            if n % 2:
                target.copy_(ordered[n // 2])
            else:
                torch.add(ordered[n // 2 - 1], ordered[n // 2], out=target).mul_(0.5)
            if self._mean_of_nearest:
                _mean_of_nearest(ordered, target, keep=keep)


class CoordinateMedian:
    """FedMedian: the unweighted coordinate-wise median of the deltas.

    With `mean_of_nearest`, "mean around median" (MeaMed; Xie, Koyejo and Gupta 2018,
    "Generalized Byzantine-tolerant SGD"): per coordinate, the mean of the
    n - (n - 1) // 2 values nearest the median. When hostile values sit on one side,
    the median is an extreme honest value (a bias that recurs every round); the values
    nearest it are then the honest ones, and their mean is not biased. Whatever the
    hostile values (f <= (n - 1) // 2 of them), every value averaged is no farther from
    the median than the farthest honest value.
    """

    name: str = "median"

    def __init__(self, *, mean_of_nearest: bool = False) -> None:
        self.mean_of_nearest = mean_of_nearest

    @property
    def streaming(self) -> bool:
        return False

    def begin(self, out: MutableTensorMap) -> RoundAggregate:
        return _MedianRound(out, mean_of_nearest=self.mean_of_nearest)

    def min_updates(self) -> int:
        return 1


class _TrimmedMeanRound(_CollectingRound):
    def __init__(
        self, out: MutableTensorMap, *, trim_fraction: float, mean_of_nearest: bool
    ) -> None:
        super().__init__(out)
        self._trim_fraction = trim_fraction
        self._mean_of_nearest = mean_of_nearest

    def _combine(self, deltas: _DeltaList) -> None:
        n = len(deltas)
        cut = math.floor(self._trim_fraction * n)
        if n - 2 * cut < 1:
            raise AggregationError(
                f"trim_fraction={self._trim_fraction} drops {cut} of {n} updates "
                "from each end: nothing remains"
            )
        for name, target in self._out.items():
            ordered = self._stacked(name, deltas).sort(dim=0).values
            torch.mean(ordered[cut : n - cut], dim=0, out=target)
            if self._mean_of_nearest:
                # Phocas: the trimmed mean tolerates `cut` hostile values; the rest are kept.
                _mean_of_nearest(ordered, target, keep=n - cut)


class TrimmedMean:
    """The coordinate-wise mean after dropping the `trim_fraction` largest and smallest.

    With `mean_of_nearest`, Phocas (Xie, Koyejo and Gupta 2018, "Phocas: dimensional
    Byzantine-resilient stochastic gradient descent"): per coordinate, the mean of the
    n - cut values nearest the trimmed mean, cut = floor(trim_fraction * n); see
    `CoordinateMedian` for why.
    """

    name: str = "trimmed_mean"

    def __init__(self, *, trim_fraction: float, mean_of_nearest: bool = False) -> None:
        # Below one half, at least one value always remains whatever the count.
        if not 0.0 <= trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
        self.trim_fraction = trim_fraction
        self.mean_of_nearest = mean_of_nearest

    @property
    def streaming(self) -> bool:
        return False

    def begin(self, out: MutableTensorMap) -> RoundAggregate:
        return _TrimmedMeanRound(
            out, trim_fraction=self.trim_fraction, mean_of_nearest=self.mean_of_nearest
        )

    def min_updates(self) -> int:
        return 1


def _squared_distances(deltas: _DeltaList, names: list[str]) -> torch.Tensor:
    """Pairwise squared L2 distances between deltas, all tensors flattened together."""
    n = len(deltas)
    distances = torch.zeros(n, n, dtype=torch.float64)
    # One tensor name at a time, so the temporaries are one layer of n clients.
    for name in names:
        stacked = torch.stack([d[name].reshape(-1) for d in deltas])
        for i in range(n):
            diff = (stacked - stacked[i]).square_()
            distances[i] += diff.sum(dim=1, dtype=torch.float64)
    return distances


def _krum_scores(distances: torch.Tensor, *, byzantine_clients: int) -> list[float]:
    """Each delta's sum of squared distances to its n - f - 2 nearest other deltas."""
    n = distances.shape[0]
    neighbours = n - byzantine_clients - 2
    scores: list[float] = []
    for i in range(n):
        others = torch.cat([distances[i, :i], distances[i, i + 1 :]])
        scores.append(float(others.sort().values[:neighbours].sum()))
    return scores


class _KrumRound(_CollectingRound):
    def __init__(self, out: MutableTensorMap, *, rule: Krum) -> None:
        super().__init__(out)
        self._rule = rule

    def _combine(self, deltas: _DeltaList) -> None:
        n, f = len(deltas), self._rule.byzantine_clients
        if n < self._rule.min_updates():
            raise AggregationError(
                f"Krum with byzantine_clients={f}, selected={self._rule.selected} needs at "
                f"least {self._rule.min_updates()} updates (n > 2f + 2 = {2 * f + 2}), got {n}"
            )
        selected = self._rule.selected if self._rule.selected is not None else n - f
        scores = _krum_scores(_squared_distances(deltas, list(self._out)), byzantine_clients=f)
        # Sorting on (score, index) breaks ties towards the lowest index, deterministically.
        chosen = sorted(range(n), key=lambda i: (scores[i], i))[:selected]
        for name, target in self._out.items():
            for i in chosen:
                target.add_(deltas[i][name])
            target.div_(len(chosen))


class Krum:
    """Krum (selected=1) and multi-Krum (Blanchard et al. 2017; El Mhamdi et al. 2018).

    Scores each delta by its squared distances to its n - f - 2 nearest others and
    averages, unweighted, the `selected` lowest-scored (n - f when None).
    """

    name: str = "krum"

    def __init__(self, *, byzantine_clients: int, selected: int | None = None) -> None:
        if byzantine_clients < 0:
            raise ValueError(f"byzantine_clients must be >= 0, got {byzantine_clients}")
        if selected is not None and selected < 1:
            raise ValueError(f"selected must be >= 1 or None, got {selected}")
        self.byzantine_clients = byzantine_clients
        self.selected = selected

    @property
    def streaming(self) -> bool:
        return False

    def begin(self, out: MutableTensorMap) -> RoundAggregate:
        return _KrumRound(out, rule=self)

    def min_updates(self) -> int:
        bound = 2 * self.byzantine_clients + 3
        if self.selected is None:
            return bound
        # Multi-Krum selects among the n - f deltas it trusts at most.
        return max(bound, self.selected + self.byzantine_clients)
