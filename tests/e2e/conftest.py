"""The kind cluster every e2e module shares (one per pytest session: creating it, building the
image and installing KEDA take minutes): a unique name, a kubeconfig of its own (the user's
current context is never touched), deleted at the end unless CELERIAC_E2E_KEEP_CLUSTER=1
(delete it then with `kind delete cluster --name <name>`). Each module installs and uninstalls
its own releases in it; a release a failed test left behind is uninstalled when its module ends
(kept with CELERIAC_E2E_KEEP_CLUSTER=1), so it does not load the next module's nodes.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.kind import (
    KEDA_MANIFEST,
    KEDA_NAMESPACE,
    NAMESPACE,
    REDIS_ON_A_CLAIM,
    KindCluster,
    require_prerequisites,
    run,
)
from tests.scenarios.scenario import Release
from tests.support import REPO_ROOT

KEEP_CLUSTER_ENV = "CELERIAC_E2E_KEEP_CLUSTER"
# How long one step of a scenario may take on kind (slower than the local node: docker).
TIMEOUT = 300.0


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KindCluster]:
    require_prerequisites()
    name = f"celeriac-e2e-{secrets.token_hex(3)}"
    directory = tmp_path_factory.mktemp("kind")
    kubeconfig = directory / "kubeconfig"
    target = ["--name", name, "--kubeconfig", str(kubeconfig)]
    config = REPO_ROOT / "k8s" / "kind-config.yaml"
    kind = KindCluster(name, kubeconfig, directory, kubectl=shutil.which("kubectl") or "kubectl")
    try:
        run(
            ["kind", "create", "cluster", *target, "--config", str(config), "--wait", "300s"],
            timeout=600,
        )
        yield kind
    finally:
        kind.close()
        if os.environ.get(KEEP_CLUSTER_ENV) != "1":
            subprocess.run(["kind", "delete", "cluster", *target], capture_output=True, timeout=300)


@pytest.fixture(scope="session")
def image(cluster: KindCluster) -> Iterator[tuple[str, str]]:
    """The celeriac image, built from this checkout and loaded into the cluster's nodes."""
    repository, tag = "celeriac.local/celeriac", f"e2e-{secrets.token_hex(4)}"
    reference = f"{repository}:{tag}"
    dockerfile = REPO_ROOT / "services" / "base" / "Dockerfile"
    run(["docker", "build", "-f", str(dockerfile), "-t", reference, str(REPO_ROOT)], timeout=1800)
    try:
        run(["kind", "load", "docker-image", reference, "--name", cluster.name], timeout=600)
        yield repository, tag
    finally:
        subprocess.run(["docker", "image", "rm", reference], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def keda(cluster: KindCluster) -> None:
    """KEDA from its release manifest, as k8s/README.md installs it (the same version as the
    local control plane builds: tests/cluster/go/keda)."""
    cluster.kubectl("apply", "--server-side", "-f", KEDA_MANIFEST)
    available = ["wait", "--for=condition=Available", "--timeout=300s"]
    cluster.kubectl(*available, "deployment", "--all", "-n", KEDA_NAMESPACE, timeout=330)
    # The external metrics API is what the HPA reads KEDA's metric through.
    cluster.kubectl(*available, "apiservice/v1beta1.external.metrics.k8s.io", timeout=330)


@pytest.fixture(scope="session")
def kind_layer(image: tuple[str, str], keda: None) -> dict[str, Any]:
    """kind's values layer under each scenario's own (as tests/cluster's LOCAL_VALUES redis is
    the local control plane's): the image built here, Redis on a claim. Asks for KEDA, so a
    test that installs a release with it finds KEDA running."""
    repository, tag = image
    return {"image": {"repository": repository, "tag": tag}, **REDIS_ON_A_CLAIM}


@pytest.fixture(scope="module", autouse=True)
def no_release_left(cluster: KindCluster) -> Iterator[None]:
    """After the module: uninstall every Helm release still in NAMESPACE (Helm's release
    Secrets, labelled owner=helm, name the releases)."""
    yield
    if os.environ.get(KEEP_CLUSTER_ENV) == "1":
        return
    secrets_of_releases = cluster.kubectl_json(
        "get", "secrets", "-n", NAMESPACE, "-l", "owner=helm"
    )["items"]
    for name in sorted({item["metadata"]["labels"]["name"] for item in secrets_of_releases}):
        print(f"uninstalling release {name}, left by a failed test")
        Release(cluster.kubeconfig, name, NAMESPACE).uninstall(timeout=300)
