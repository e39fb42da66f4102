#!/usr/bin/env bash
# `make e2e`: the end-to-end suite (tests/e2e) on a real Kubernetes API server.
#   KUBECONFIG set   that cluster; the tests that need fake nodes or the audit log are skipped.
#   KUBECONFIG unset the kubelet-less control plane of ../shared/k8s (or $FLOTILLA_K8S_DIR):
#                    started for the run and stopped after it, unless it was already up or
#                    FLOTILLA_E2E_KEEP=1; the tests get FLOTILLA_E2E_FAKE_NODES=1 and its
#                    audit log in FLOTILLA_E2E_AUDIT_LOG.
#   neither          every test is skipped, saying why.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTEST=${PYTEST:-.venv/bin/pytest}

find_control_plane() {
  # A clone of the project's checkout finds it beside the checkout it was cloned from, or
  # where this workplace keeps it.
  local origin
  origin=$(git config --get remote.origin.url 2>/dev/null || true)
  for dir in "${FLOTILLA_K8S_DIR:-}" ../shared/k8s "${origin:+$origin/../shared/k8s}" \
    /work/shared/k8s; do
    if [ -n "$dir" ] && [ -x "$dir/up.sh" ]; then
      (cd "$dir" && pwd)
      return 0
    fi
  done
  return 1
}

if [ -z "${KUBECONFIG:-}" ]; then
  if k8s=$(find_control_plane); then
    export K8S_HOME=${K8S_HOME:-/tmp/flotilla-k8s}
    pid_file=$K8S_HOME/run/kube-apiserver.pid
    was_up=""
    if [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then was_up=1; fi
    eval "$("$k8s/up.sh")"
    if [ -z "$was_up" ] && [ -z "${FLOTILLA_E2E_KEEP:-}" ]; then
      trap '"$k8s/down.sh" --wipe' EXIT
    fi
    export FLOTILLA_E2E_FAKE_NODES=1 FLOTILLA_E2E_AUDIT_LOG=$K8S_HOME/run/audit.log
  else
    echo "e2e: KUBECONFIG is unset and there is no ../shared/k8s: every e2e test is skipped" >&2
  fi
fi
status=0
"$PYTEST" -m e2e tests/e2e -rs "$@" || status=$?
exit "$status"
