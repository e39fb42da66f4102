"""How a job's processes trust each other: TLS between clients and the aggregator, and the
NetworkPolicy that fences the aggregator in. Plain HTTP only where the spec says so."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from flotilla.api.base import ApiModel

TlsMode = Literal["operator", "certManager", "disabled"]
# Label keys and values, as Kubernetes allows them in selectors.
LabelMap = dict[str, str]


class IssuerRef(ApiModel):
    """The cert-manager Issuer or ClusterIssuer that signs the aggregator's certificate."""

    name: str = Field(min_length=1)
    kind: Literal["Issuer", "ClusterIssuer"] = "Issuer"


class TlsSpec(ApiModel):
    """TLS between clients and the aggregator: operator, certManager or disabled (plain HTTP)."""

    # operator: the operator makes a CA and a serving certificate per job (the local runner
    # does the same in its state dir); certManager: a cert-manager Certificate writes them;
    # disabled: plain HTTP, bearer tokens in clear on the wire.

    mode: TlsMode = "operator"
    issuer_ref: IssuerRef | None = None  # required by certManager

    @model_validator(mode="after")
    def _issuer_for_cert_manager(self) -> TlsSpec:
        if self.mode == "certManager" and self.issuer_ref is None:
            raise ValueError("mode certManager needs issuerRef: {name, kind}")
        return self

    @property
    def enabled(self) -> bool:
        return self.mode != "disabled"


class LabelSelector(ApiModel):
    match_labels: LabelMap = Field(default_factory=dict)  # {}: everything


class NetworkPeer(ApiModel):
    """A NetworkPolicy peer: pods of podSelector in namespaces of namespaceSelector."""

    namespace_selector: LabelSelector | None = None
    pod_selector: LabelSelector | None = None

    @model_validator(mode="after")
    def _some_selector(self) -> NetworkPeer:
        if self.namespace_selector is None and self.pod_selector is None:
            raise ValueError("a peer needs namespaceSelector, podSelector or both")
        return self


class NetworkPolicySpec(ApiModel):
    """A NetworkPolicy: the aggregator's port open to the job's clients, the operator, allowFrom."""

    # The operator polls /v1/status, so it is let in unless allowOperator is false; allowFrom
    # adds peers such as Prometheus.

    enabled: bool = False
    allow_operator: bool = True
    allow_from: list[NetworkPeer] = Field(default_factory=list)


class SecuritySpec(ApiModel):
    tls: TlsSpec = Field(default_factory=TlsSpec)
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)
