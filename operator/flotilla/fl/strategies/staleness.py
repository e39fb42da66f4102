"""Staleness weighting for buffered asynchronous aggregation (FedBuff).

Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation": clients
train on whichever model version they last fetched, the server folds their deltas into a
buffer as they arrive and steps once the buffer holds K of them. A delta computed on a
model `staleness` server steps old is scaled by s(staleness) = 1 / sqrt(1 + staleness),
the paper's choice, before it is folded. With example counts n_k the buffer's delta is

    sum_k n_k * s(staleness_k) * delta_k / sum_k n_k

which is FedBuff's (1/K) sum_k s_k delta_k when every client has as many examples. The
normaliser leaves s out on purpose: a buffer of stale deltas moves the model less, rather
than being scaled back up to a fresh one's size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping


def staleness_weight(staleness: int) -> float:
    """s(staleness) = 1 / sqrt(1 + staleness): 1 for a delta on the current model."""
    if staleness < 0:
        raise ValueError(f"staleness is a count of server steps, >= 0; got {staleness}")
    return 1.0 / math.sqrt(1.0 + staleness)


def staleness_scales(
    scales: Mapping[str, float], names: Iterable[str], *, staleness: int
) -> dict[str, float]:
    """Per-tensor scales (int8's, 1.0 where none) times s(staleness): the delta is scaled
    as it is folded, without a copy."""
    weight = staleness_weight(staleness)
    return {name: scales.get(name, 1.0) * weight for name in names}
