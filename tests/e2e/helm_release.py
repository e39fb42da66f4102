"""Install or uninstall charts/flotilla on the cluster of $KUBECONFIG with Helm's own engine.

No registry ships a `helm` executable; helm-sdkpy embeds Helm v4 (Python >= 3.12, run from
.venv-helm). Releases are kept as Helm keeps them by default (Secrets in the release's
namespace), so an install and its uninstall can be two runs. Prints one JSON object.

    .venv-helm/bin/python tests/e2e/helm_release.py install|uninstall --release R --namespace N
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

CHART = Path(__file__).resolve().parents[2] / "charts" / "flotilla"


async def run(action: str, *, release: str, namespace: str, values: dict[str, Any]) -> Any:
    import helm_sdkpy

    kubeconfig = Path(os.environ["KUBECONFIG"]).read_text()
    config = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=kubeconfig)
    if action == "install":
        return await helm_sdkpy.Install(config).run(
            release, str(CHART), values=values, wait=False, timeout=120
        )
    return await helm_sdkpy.Uninstall(config).run(release)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["install", "uninstall"])
    parser.add_argument("--release", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--values", default="{}", help="chart values, as JSON")
    args = parser.parse_args()
    values = json.loads(args.values)
    result = asyncio.run(
        run(args.action, release=args.release, namespace=args.namespace, values=values)
    )
    json.dump(result, sys.stdout, default=str)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
