"""The aggregation interface: one round's client deltas in, the next global model out.

A strategy is an aggregation *rule* (how the round's client deltas become one
delta) paired with a *server optimizer* (how that delta moves the global model),
the split of Reddi et al. 2021, "Adaptive Federated Optimization". Clients send
deltas (local weights minus the global weights they started from), never full
weights: deltas quantize far better, and every rule below is translation
invariant, so the result is the same as aggregating weights.

Memory is the point of the shape of this interface. The aggregator hands a rule
one zero-filled float32 buffer per round (`out`); a streaming rule (the weighted
mean) folds each delta into it as the upload arrives and keeps nothing else, so a
round costs one model of memory whatever the number of clients. Rules that need
every delta at once (median, trimmed mean, Krum) copy what they are given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Protocol

import torch

TensorMap = Mapping[str, torch.Tensor]
MutableTensorMap = MutableMapping[str, torch.Tensor]


class AggregationError(Exception):
    """The round's updates cannot be aggregated (for example too few for Krum's bound)."""


class RoundAggregate(Protocol):
    """Folds the deltas of one round. Created by `AggregationRule.begin`."""

    @property
    def count(self) -> int:
        """How many deltas were added so far."""
        ...

    def add(
        self,
        delta: TensorMap,
        *,
        weight: float,
        scales: Mapping[str, float],
        minus: TensorMap | None = None,
        release: Callable[[str], None] | None = None,
    ) -> None:
        """Fold one client's delta.

        `delta` holds one tensor per name of the model's layout, float32, float16 or
        int8, possibly views into a receive buffer that is reused once this returns:
        keep copies, never references. The value of tensor `name` is
        `(delta[name] - minus[name]) * scales.get(name, 1.0)`, without the `minus` term
        when it is None. `minus` is given when a client sent its trained weights: it is
        the round's global model, the same for every such client, and stays unchanged
        until `finish` returns (a rule may keep a reference). `weight` is the client's
        example count. `release`, when given, is called with each name of `delta` as soon
        as the rule will not read that tensor again (the receive buffer under it is
        refilled from then on), in the model's layout order where the rule can.
        """
        ...

    def finish(self) -> None:
        """Leave the aggregated delta (float32) in the `out` buffer given to `begin`.

        Raises AggregationError when the deltas added cannot be aggregated.
        """
        ...


class AggregationRule(Protocol):
    name: str

    @property
    def streaming(self) -> bool:
        """True when the rule keeps O(model) memory whatever the number of clients."""
        ...

    def begin(self, out: MutableTensorMap) -> RoundAggregate:
        """Start a round; `out` is zero-filled float32, one tensor per layout name."""
        ...

    def min_updates(self) -> int:
        """The fewest deltas this rule can aggregate."""
        ...


class ServerOptimizer(Protocol):
    name: str

    def step(self, *, global_weights: TensorMap, update: MutableTensorMap) -> None:
        """Move the global model.

        On entry `update` holds the aggregated delta; on return it holds the new
        global weights (written in place: its buffer becomes the next global model).
        `global_weights` is read only.
        """
        ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Optimizer state to checkpoint (moments); empty when stateless."""
        ...

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None: ...
