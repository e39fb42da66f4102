"""The open round's aggregate: updates fold into one accumulator as they arrive.

One fold at a time, in a worker thread, each in its `turn()`. Whoever closes the round
takes its turn too, after the folds in flight: a round that closes takes nothing
half-done, and an update that waited meanwhile sees the round closed. The accumulator is
the retired global model, zeroed in the background (spare.py); it becomes the next global
model in place, so a round allocates no model-sized buffer.

Buffered aggregation (buffered.py) folds the same way, each delta scaled by its staleness
(strategies/staleness.py), and can resume a sum written down before a restart (`resume`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from flotilla.fl.aggregator.offload import update_pass
from flotilla.fl.aggregator.privacy import DifferentialPrivacy
from flotilla.fl.aggregator.spare import SpareModelBuffer
from flotilla.fl.codec import DecodedUpdate
from flotilla.fl.strategies.base import AggregationRule, RoundAggregate
from flotilla.fl.strategies.rules import WeightedMean
from flotilla.fl.strategies.staleness import staleness_scales
from flotilla.fl.wire import Layout


class RoundFold:
    def __init__(
        self, *, rule: AggregationRule, layout: Layout, privacy: DifferentialPrivacy | None
    ) -> None:
        self._rule = rule
        self._layout = layout
        self._privacy = privacy
        self._spare = SpareModelBuffer(layout)
        self._lock = asyncio.Lock()
        self._aggregate: RoundAggregate | None = None
        self._accumulator: bytearray | None = None
        self._weight = 0.0  # the weights folded into the open aggregate
        self._zeroing: asyncio.Task[None] | None = None  # folds wait for it

    def turn(self) -> AbstractAsyncContextManager[None]:
        """Exclusive use of the aggregate: to fold one update, or to close the round."""
        return self._lock

    def begin(self) -> None:
        """A fresh aggregate for the round that opens."""
        self._accumulator, self._zeroing = self._spare.take()
        self._aggregate = self._rule.begin(self._layout.views(self._accumulator))
        self._weight = 0.0

    def resume(self, accumulator: bytearray, *, total_weight: float, count: int) -> None:
        """Go on with a weighted sum written down before a restart (buffered aggregation's
        journal): `accumulator` holds `count` deltas folded with weights `total_weight`."""
        rule = self._rule
        if not isinstance(rule, WeightedMean):
            raise TypeError(f"only the weighted mean resumes a sum, not {rule.name!r}")
        views = self._layout.views(accumulator)
        self._aggregate = rule.resume(views, total_weight=total_weight, count=count)
        self._accumulator, self._zeroing, self._weight = accumulator, None, total_weight

    def held(self) -> tuple[bytearray, float, int] | None:
        """The open sum as it stands: its buffer (not divided yet), its weight, its count."""
        if self._aggregate is None or self._accumulator is None:
            return None
        return self._accumulator, self._weight, self._aggregate.count

    async def add(
        self,
        update: DecodedUpdate,
        *,
        examples: int,
        staleness: int = 0,
        release: Callable[[str], None] | None = None,
    ) -> None:
        """Fold one checked update, weighted by its examples (uniformly under DP), scaled by
        its staleness (buffered aggregation; 0 counts fully). `release`: told each tensor
        the fold is done reading (RoundAggregate.add)."""
        assert self._lock.locked(), "fold in a turn()"
        aggregate = self._aggregate
        assert aggregate is not None, "no round is open"
        if self._zeroing is not None:  # the recycled accumulator, still being zeroed
            await self._zeroing
        weight, scales = float(examples), update.scales
        if self._privacy is not None:
            # DP-FedAvg: uniform weights, each delta clipped as it is folded (a scale, no copy).
            weight = 1.0
            scales = self._privacy.clipped_scales(scales, update.tensors, norm=update.norm)
        if staleness:
            scales = staleness_scales(scales, update.tensors, staleness=staleness)
        await update_pass(
            self._layout.data_size,
            aggregate.add,
            update.tensors,
            weight=weight,
            scales=scales,
            minus=update.minus,
            release=release,
        )
        self._weight += weight

    def take(self) -> tuple[RoundAggregate, bytearray] | None:
        """The closing round's aggregate and the accumulator it folded into (None: no round
        was open); the fold holds neither any more."""
        aggregate, accumulator = self._aggregate, self._accumulator
        self._aggregate = self._accumulator = None
        self._weight = 0.0
        if aggregate is None or accumulator is None:
            return None
        return aggregate, accumulator

    async def finish(
        self, aggregate: RoundAggregate, accumulator: bytearray, *, answered: int, sampled: int
    ) -> dict[str, Any] | None:
        """The rule's mean of the round taken, in `accumulator`; under DP noised and its
        privacy spent (returned for the round's record)."""
        await asyncio.to_thread(aggregate.finish)
        privacy = self._privacy
        if privacy is None:
            return None
        mean = self._layout.views(accumulator)
        await asyncio.to_thread(privacy.privatize, mean, answered=answered, sampled=sampled)
        return privacy.spend(sampled=sampled)

    def recycle(self, buffer: bytearray) -> None:
        """A model buffer nobody reads any more: the next round's accumulator."""
        self._spare.retire(buffer)
