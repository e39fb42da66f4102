"""The random source of a plan: where new client tokens and a job's TLS material come from.

A plan is a pure function of its inputs, this source included. The operator passes
`SYSTEM` (`secrets` and fresh keys); `flotilla plan` placeholders; tests a seeded source,
so that the same inputs give the same plan.
"""

from __future__ import annotations

import secrets
from typing import Protocol

from flotilla.api import FederatedJob
from flotilla.fl.certs import TlsMaterial, make_tls
from flotilla.k8s.objects import aggregator_name
from flotilla.k8s.security_objects import dns_names


class Entropy(Protocol):
    def token(self) -> str:
        """A new client token, URL-safe."""
        ...

    def tls(self, job: FederatedJob) -> TlsMaterial:
        """A new CA and the aggregator's serving certificate and key."""
        ...


class SystemEntropy:
    def token(self) -> str:
        return secrets.token_urlsafe(32)

    def tls(self, job: FederatedJob) -> TlsMaterial:
        return make_tls(common_name=aggregator_name(job), dns_names=dns_names(job))


SYSTEM: Entropy = SystemEntropy()
