"""Server optimizers: how the aggregated delta moves the global model.

Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2: the aggregated
delta is treated as a pseudo-gradient. `ServerSgd` with learning rate 1 is plain
FedAvg; `ServerAdam`, `ServerYogi` and `ServerAdagrad` keep per-coordinate
moments m and v across rounds. As in the paper, there is no bias correction, m
starts at 0 and v at tau^2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from flotilla.fl.strategies.base import MutableTensorMap, TensorMap


def _check_layout(global_weights: TensorMap, update: MutableTensorMap) -> None:
    if update.keys() != global_weights.keys():
        raise ValueError(
            f"update names {sorted(update)} differ from global names {sorted(global_weights)}"
        )


class ServerSgd:
    """new = global + learning_rate * delta; stateless."""

    name: str = "sgd"

    def __init__(self, *, learning_rate: float = 1.0) -> None:
        if not math.isfinite(learning_rate) or learning_rate <= 0:
            raise ValueError(f"learning_rate must be finite and > 0, got {learning_rate}")
        self.learning_rate = learning_rate

    def step(self, *, global_weights: TensorMap, update: MutableTensorMap) -> None:
        _check_layout(global_weights, update)
        for name, tensor in update.items():  # one pass over each tensor, not two
            torch.add(global_weights[name], tensor, alpha=self.learning_rate, out=tensor)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"{self.name} is stateless, got state keys {sorted(state)}")


class _AdaptiveOptimizer:
    """Shared step of the adaptive optimizers; subclasses say how v moves."""

    name: str = "adaptive"

    def __init__(
        self,
        *,
        learning_rate: float,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        if not math.isfinite(learning_rate) or learning_rate <= 0:
            raise ValueError(f"learning_rate must be finite and > 0, got {learning_rate}")
        for field, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{field} must be in [0, 1), got {beta}")
        if not math.isfinite(tau) or tau <= 0:
            raise ValueError(f"tau must be finite and > 0, got {tau}")
        self.learning_rate = learning_rate
        self.beta1 = beta1
        self.beta2 = beta2
        self.tau = tau
        self._m: dict[str, torch.Tensor] = {}
        self._v: dict[str, torch.Tensor] = {}

    def step(self, *, global_weights: TensorMap, update: MutableTensorMap) -> None:
        _check_layout(global_weights, update)
        self._ensure_state(update)
        for name, tensor in update.items():
            m, v = self._m[name], self._v[name]
            m.mul_(self.beta1).add_(tensor, alpha=1.0 - self.beta1)
            # The delta is not needed past m, so its buffer holds delta^2 and then the
            # new weights: the step allocates nothing model-sized beyond m and v.
            squared = tensor.square_()
            self._update_v(v, squared)
            torch.sqrt(v, out=tensor)
            tensor.add_(self.tau)
            torch.div(m, tensor, out=tensor)
            tensor.mul_(self.learning_rate).add_(global_weights[name])

    def _update_v(self, v: torch.Tensor, squared: torch.Tensor) -> None:
        raise NotImplementedError

    def _ensure_state(self, update: TensorMap) -> None:
        if not self._m:
            for name, tensor in update.items():
                self._m[name] = torch.zeros_like(tensor, dtype=torch.float32)
                self._v[name] = torch.full_like(tensor, self.tau**2, dtype=torch.float32)
            return
        if self._m.keys() != update.keys():
            raise ValueError(
                f"optimizer state names {sorted(self._m)} differ from update names {sorted(update)}"
            )
        for name, tensor in update.items():
            if self._m[name].shape != tensor.shape:
                raise ValueError(
                    f"optimizer state {name!r} has shape {tuple(self._m[name].shape)}, "
                    f"update has {tuple(tensor.shape)}"
                )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The live moments (not copies), keyed "m/<name>" and "v/<name>"."""
        state = {f"m/{name}": m for name, m in self._m.items()}
        state.update({f"v/{name}": v for name, v in self._v.items()})
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        m: dict[str, torch.Tensor] = {}
        v: dict[str, torch.Tensor] = {}
        for key, tensor in state.items():
            kind, _, name = key.partition("/")
            if kind not in ("m", "v") or not name:
                raise ValueError(f"optimizer state key {key!r} is not 'm/<name>' or 'v/<name>'")
            # Copied: the checkpoint's tensors may share a buffer that is reused.
            (m if kind == "m" else v)[name] = tensor.to(dtype=torch.float32, copy=True)
        if m.keys() != v.keys():
            raise ValueError(f"optimizer state has m for {sorted(m)} but v for {sorted(v)}")
        for name in m:
            if m[name].shape != v[name].shape:
                raise ValueError(
                    f"optimizer state {name!r}: m has shape {tuple(m[name].shape)}, "
                    f"v has {tuple(v[name].shape)}"
                )
        self._m, self._v = m, v


class ServerAdam(_AdaptiveOptimizer):
    """FedAdam: v = beta2 v + (1 - beta2) delta^2."""

    name: str = "adam"

    def _update_v(self, v: torch.Tensor, squared: torch.Tensor) -> None:
        v.mul_(self.beta2).add_(squared, alpha=1.0 - self.beta2)


class ServerYogi(_AdaptiveOptimizer):
    """FedYogi: v = v - (1 - beta2) delta^2 sign(v - delta^2); v changes additively."""

    name: str = "yogi"

    def _update_v(self, v: torch.Tensor, squared: torch.Tensor) -> None:
        sign = torch.sub(v, squared).sign_()
        v.addcmul_(squared, sign, value=-(1.0 - self.beta2))


class ServerAdagrad(_AdaptiveOptimizer):
    """FedAdagrad: v = v + delta^2 (beta2 is unused)."""

    name: str = "adagrad"

    def _update_v(self, v: torch.Tensor, squared: torch.Tensor) -> None:
        v.add_(squared)
