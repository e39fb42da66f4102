"""The FederatedJob resource: typed spec and status models, and loading them from YAML."""

from flotilla.api.data import (
    CvatCredentialsSpec,
    CvatExportSource,
    CvatServerSource,
    DataSource,
    ExportDataSource,
)
from flotilla.api.errors import SpecError
from flotilla.api.loader import load_job, parse_job, read_job
from flotilla.api.privacy import PrivacySpec
from flotilla.api.security import NetworkPolicySpec, SecuritySpec, TlsSpec
from flotilla.api.spec import (
    API_GROUP,
    API_VERSION,
    KIND,
    ClientsSpec,
    CompressionSpec,
    EvaluationSpec,
    FederatedJob,
    FederatedJobSpec,
    InputSpec,
    LimitsSpec,
    ModelSpec,
    ObjectMeta,
    SiteSpec,
    TrainingSpec,
)
from flotilla.api.status import ClientCounts, Condition, FederatedJobStatus, Phase
from flotilla.api.strategy import BufferedSpec, StrategyName, StrategyParams, StrategySpec
from flotilla.api.tracking import TrackingSpec

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "KIND",
    "BufferedSpec",
    "ClientCounts",
    "ClientsSpec",
    "CompressionSpec",
    "Condition",
    "CvatCredentialsSpec",
    "CvatExportSource",
    "CvatServerSource",
    "DataSource",
    "EvaluationSpec",
    "ExportDataSource",
    "FederatedJob",
    "FederatedJobSpec",
    "FederatedJobStatus",
    "InputSpec",
    "LimitsSpec",
    "ModelSpec",
    "NetworkPolicySpec",
    "ObjectMeta",
    "Phase",
    "PrivacySpec",
    "SecuritySpec",
    "SiteSpec",
    "SpecError",
    "StrategyName",
    "StrategyParams",
    "StrategySpec",
    "TlsSpec",
    "TrackingSpec",
    "TrainingSpec",
    "load_job",
    "parse_job",
    "read_job",
]
