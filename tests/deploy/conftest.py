"""Session fixtures: a real `helm` (built once by deploy/tools/install-helm.sh) and its renders.

Without `go` on PATH the chart tests skip with that reason; everything else here runs anyway.
The first build takes 3–4 minutes on two cores with empty Go caches (171–248 s measured); its
progress is printed live (pytest's capture is suspended for it) and the binary is cached in
~/.cache/qmsflow/bin, so later sessions start at once.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from qmsflow.settings import PROJECT_ROOT

CHART = PROJECT_ROOT / "deploy" / "helm" / "qmsflow"
INSTALL_HELM = PROJECT_ROOT / "deploy" / "tools" / "install-helm.sh"
PRODUCTION_VALUES = CHART / "values-production.yaml"
#: the Kubernetes versions manifests are validated against: the chart's kubeVersion floor and
#: the newest schemas kubernetes-validate 1.37.0 ships
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
#: the Kubernetes version `helm template` renders for (its Capabilities.KubeVersion)
RENDER_KUBE_VERSION = "1.33.0"

Manifest = dict[str, Any]


@pytest.fixture(scope="session")
def helm(request: pytest.FixtureRequest) -> Path:
    """The pinned helm binary, built with `go install` on first use and cached."""
    if shutil.which("go") is None:
        pytest.skip("`go` is not on PATH: helm is built from the Go module proxy with go install")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    started = time.monotonic()
    with capture.global_and_fixture_disabled():
        result = subprocess.run(
            ["bash", str(INSTALL_HELM)], stdout=subprocess.PIPE, text=True, check=False
        )
    if result.returncode != 0:
        pytest.fail(f"deploy/tools/install-helm.sh failed (exit {result.returncode})")
    took = time.monotonic() - started
    if took > 5:
        print(f"\nhelm ready in {took:.0f}s: {result.stdout.strip()}")
    return Path(result.stdout.strip())


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run helm on the chart; the result is returned whatever the exit code."""
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, check=False, timeout=120
    )


def render(helm: Path, *values_args: str) -> list[Manifest]:
    """`helm template` of the chart, parsed into manifests (hooks included)."""
    result = run_helm(
        helm,
        "template",
        "qmsflow",
        str(CHART),
        "--kube-version",
        RENDER_KUBE_VERSION,
        *values_args,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def default_manifests(helm: Path) -> list[Manifest]:
    """The chart rendered with its default values."""
    return render(helm)


@pytest.fixture(scope="session")
def production_manifests(helm: Path) -> list[Manifest]:
    """The chart rendered with values-production.yaml."""
    return render(helm, "-f", str(PRODUCTION_VALUES))


@pytest.fixture(scope="session", params=["default", "production"])
def manifests(
    request: pytest.FixtureRequest,
    default_manifests: list[Manifest],
    production_manifests: list[Manifest],
) -> list[Manifest]:
    """Each render in turn: default values, then production values."""
    return default_manifests if request.param == "default" else production_manifests
