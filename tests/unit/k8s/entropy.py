"""Random sources for plans in tests (flotilla.k8s.entropy.Entropy): the same source, the
same plan."""

from __future__ import annotations

import itertools
import random

from flotilla.api import FederatedJob
from flotilla.fl.certs import TlsMaterial

FAKE_TLS = TlsMaterial(cert="CERTIFICATE", key="PRIVATE KEY", ca="CA CERTIFICATE")


class CountingEntropy:
    """Tokens `generated-token-1`, `-2`...; the same fake TLS material for every job."""

    def __init__(self) -> None:
        self._count = itertools.count(1)

    def token(self) -> str:
        return f"generated-token-{next(self._count)}"

    def tls(self, job: FederatedJob) -> TlsMaterial:
        return FAKE_TLS


class SeededEntropy:
    """Tokens from a seeded `random.Random`, as `secrets.token_urlsafe` shapes them; TLS
    material named after the job and a draw (no key is generated)."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def token(self) -> str:
        return f"tok-{self._random.getrandbits(96):024x}"

    def tls(self, job: FederatedJob) -> TlsMaterial:
        draw = f"{self._random.getrandbits(32):08x}"
        name = job.metadata.name
        return TlsMaterial(
            cert=f"CERTIFICATE {name} {draw}", key=f"KEY {name} {draw}", ca=f"CA {name} {draw}"
        )
