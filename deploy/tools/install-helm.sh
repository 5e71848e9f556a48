#!/usr/bin/env bash
# Build helm once from the Go module proxy into a cache outside the work tree, then reuse it.
#
# Prints the binary's path on stdout (progress goes to stderr), so callers can write
#   HELM="$(deploy/tools/install-helm.sh)"
# Environment:
#   QMSFLOW_HELM_VERSION   helm.sh/helm/v3 version to build (default below, pinned)
#   QMSFLOW_TOOLS_DIR      where binaries are kept (default ~/.cache/qmsflow/bin)
#   QMSFLOW_HELM_TIMEOUT   seconds the first build may take before it is abandoned (default 900)
set -euo pipefail

# v3.22.0: the newest helm 3 on the module proxy when pinned; helm 4 changed the CLI's output.
HELM_VERSION="${QMSFLOW_HELM_VERSION:-v3.22.0}"
# The Kubernetes version helm assumes when no cluster is asked (helm's own Makefile sets it from
# its client-go, v0.37 for helm v3.22; a bare `go install` would leave helm assuming 1.20).
KUBE_MAJOR=1
KUBE_MINOR="${QMSFLOW_HELM_KUBE_MINOR:-37}"
TOOLS_DIR="${QMSFLOW_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/qmsflow/bin}"
# A cold build on 2 cores with an empty module cache takes a few minutes; bound it so CI fails
# clearly instead of eating its 90-minute budget.
TIMEOUT="${QMSFLOW_HELM_TIMEOUT:-900}"

target="$TOOLS_DIR/helm-$HELM_VERSION"
if [[ -x "$target" ]]; then
  echo "$target"
  exit 0
fi

command -v go >/dev/null || { echo "install-helm: 'go' is not on PATH; helm is built with go install" >&2; exit 3; }
mkdir -p "$TOOLS_DIR"
build_dir="$(mktemp -d "$TOOLS_DIR/.build.XXXXXX")"
trap 'rm -rf "$build_dir"' EXIT

echo "install-helm: building helm $HELM_VERSION with go install (first time only; a few minutes)" >&2
start=$(date +%s)
log="$build_dir/build.log"
# -modcacherw: leave the module cache deletable; -v names each package as it compiles, which is
# the progress shown every 50 packages (helm has several hundred).
GOBIN="$build_dir" GOFLAGS="${GOFLAGS:-} -modcacherw" CGO_ENABLED=0 \
  timeout "$TIMEOUT" go install -v -trimpath -ldflags "-w -s \
    -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$KUBE_MAJOR \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$KUBE_MINOR \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$KUBE_MAJOR \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$KUBE_MINOR" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" 2>"$log" &
pid=$!
tick=0
while kill -0 "$pid" 2>/dev/null; do
  sleep 1
  (( ++tick % 10 == 0 )) || continue
  echo "install-helm: $(( $(date +%s) - start ))s, $(wc -l <"$log") packages so far…" >&2
done
if ! wait "$pid"; then
  tail -n 20 "$log" >&2
  echo "install-helm: go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed or exceeded ${TIMEOUT}s" >&2
  exit 1
fi
# The rename is atomic, so a concurrent run never sees a half-written binary.
mv "$build_dir/helm" "$target"
echo "install-helm: built $target in $(( $(date +%s) - start ))s" >&2
echo "$target"
