"""How far MLflow is in step with the ledger, kept beside the checkpoints.

The journal is written before the run exists (with a random key that the run is
tagged with), so an aggregator that dies between creating the run and recording
its id finds the run again by that tag instead of creating a second one.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FILE_NAME = "tracking.json"


@dataclass
class Journal:
    run_key: str = field(default_factory=lambda: secrets.token_hex(8))
    run_id: str | None = None
    experiment_id: str | None = None
    rounds_logged: int = 0  # rounds whose own metrics MLflow holds
    federated_logged: int = 0  # rounds whose federated evaluation MLflow holds
    checkpoints_logged: list[int] = field(default_factory=list)
    history_logged_at: int | None = None  # rounds completed when history.json was written
    registered: dict[str, Any] | None = None  # {"name", "version", "round"}
    run_status: str | None = None  # the terminal status last set on the run
    promotion: dict[str, Any] | None = None  # the gate's decision: {"round", promotion.Decision}

    def forget_run(self) -> None:
        """The run is gone (another server, a deleted run): start over in a new one."""
        fresh = Journal()
        for key, value in asdict(fresh).items():
            setattr(self, key, value)


def load_journal(state_dir: Path) -> Journal | None:
    """The journal kept in `state_dir`, None if there is none."""
    path = state_dir / FILE_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read the tracking journal {path}: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"the tracking journal {path} is not a JSON object")
    known = Journal.__dataclass_fields__
    return Journal(**{key: value for key, value in data.items() if key in known})


def save_journal(state_dir: Path, journal: Journal) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / FILE_NAME
    temporary = path.with_suffix(".tmp")
    with temporary.open("w") as handle:
        json.dump(asdict(journal), handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
