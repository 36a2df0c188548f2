"""skaffold.yaml and the values files under k8s/ agree with the chart and the image.

No skaffold binary or JSON schema is available offline, so the structure is checked against
the keys of skaffold's v4beta14 schema that this file uses, every path it names must exist,
and every values combination it deploys is rendered with the chart tests' render helper (the
real Helm engine).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.kube_schemas import SchemaMissing, errors
from tests.chart.render import CHART_DIR as CHART
from tests.chart.render import Obj, Rendered, deep_merge, render
from tests.support import REPO_ROOT

pytestmark = pytest.mark.chart

SKAFFOLD = REPO_ROOT / "skaffold.yaml"
BASE_DOCKERFILE = REPO_ROOT / "services" / "base" / "Dockerfile"
VALUES_DEV = REPO_ROOT / "k8s" / "values-dev.yaml"
VALUES_PRODUCTION = REPO_ROOT / "k8s" / "values-production.yaml"
VALUES_OWN_TASKS = REPO_ROOT / "k8s" / "examples" / "own-tasks" / "values.yaml"
VALUES_E2E = REPO_ROOT / "tests" / "scenarios" / "values.yaml"

# Keys of skaffold/v4beta14 objects used here (docs-v2/content/en/schemas/v4beta14.json in
# GoogleContainerTools/skaffold), so a misspelt key fails here instead of in `skaffold dev`.
KNOWN_KEYS = {
    "config": {
        "apiVersion", "kind", "metadata", "requires", "build", "test", "manifests", "deploy",
        "portForward", "resourceSelector", "verify", "customActions", "profiles",
    },
    "build": {
        "artifacts", "insecureRegistries", "tagPolicy", "platforms", "local", "googleCloudBuild",
        "cluster",
    },
    "local": {"push", "tryImportMissing", "useDockerCLI", "useBuildkit", "concurrency"},
    "artifact": {"image", "context", "sync", "requires", "hooks", "platforms", "runtimeType",
                 "docker"},
    "docker": {
        "dockerfile", "target", "buildArgs", "network", "addHost", "cacheFrom", "cacheTo",
        "cliFlags", "pullParent", "noCache", "squash", "secrets", "ssh",
    },
    "release": {
        "name", "chartPath", "remoteChart", "valuesFiles", "namespace", "version", "setValues",
        "setValueTemplates", "setFiles", "createNamespace", "wait", "recreatePods",
        "skipBuildDependencies", "skipTests", "useHelmSecrets", "repo", "upgradeOnChange",
        "overrides", "packaged", "dependsOn",
    },
    "portForward": {"resourceType", "resourceName", "namespace", "port", "address", "localPort"},
    "profile": {
        "name", "activation", "requiresAllActivations", "patches", "build", "test", "manifests",
        "deploy", "portForward", "resourceSelector", "verify", "customActions",
    },
    "activation": {"env", "kubeContext", "command"},
    "patch": {"op", "path", "from", "value"},
}  # fmt: skip


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def skaffold() -> dict[str, Any]:
    config: dict[str, Any] = load(SKAFFOLD)
    return config


def the_release(config: dict[str, Any]) -> dict[str, Any]:
    (release,) = config["deploy"]["helm"]["releases"]
    assert isinstance(release, dict)
    return release


def the_artifact(config: dict[str, Any]) -> dict[str, Any]:
    (artifact,) = config["build"]["artifacts"]
    assert isinstance(artifact, dict)
    return artifact


def image_variable_suffix(image: str) -> str:
    """How skaffold names an image in template variables: IMAGE_REPO_<this>."""
    return re.sub(r"[^a-zA-Z0-9]", "_", image)


def apply_patches(config: dict[str, Any], patches: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 add and replace, the operations skaffold profiles here use."""
    patched = copy.deepcopy(config)
    for patch in patches:
        assert patch["op"] in ("add", "replace"), patch
        *parents, last = [p for p in patch["path"].split("/") if p]
        node: Any = patched
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if patch["op"] == "replace":
            assert last in node, f"{patch['path']}: nothing to replace"
        node[last] = copy.deepcopy(patch["value"])
    return patched


def has_value(values: dict[str, Any], dotted: str) -> bool:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def chart_values() -> dict[str, Any]:
    values: dict[str, Any] = load(CHART / "values.yaml")
    return values


def render_layers(*layers: dict[str, Any], release: str = "celeriac") -> Rendered:
    """Values files applied in order, as `helm -f a -f b` merges them."""
    values: dict[str, Any] = {}
    for layer in layers:
        values = deep_merge(values, layer)
    return render(values, release=release)


def set_values(pairs: dict[str, Any]) -> dict[str, Any]:
    """What `helm --set key=value,...` makes of skaffold's setValues, with Helm's own parser."""
    import helm_python as helm

    values: dict[str, Any] = {}
    for key, value in pairs.items():
        values = deep_merge(values, helm.parse_set_string(f"{key}={value}"))
    return values


def objects(rendered: Rendered, kind: str) -> dict[str, Obj]:
    return {obj["metadata"]["name"]: obj for obj in rendered.of_kind(kind)}


# --- skaffold.yaml ---------------------------------------------------------------------------


def test_skaffold_uses_known_keys_of_the_current_schema() -> None:
    config = skaffold()
    assert config["apiVersion"] == "skaffold/v4beta14"
    assert config["kind"] == "Config"
    checks: list[tuple[str, dict[str, Any]]] = [
        ("config", config),
        ("build", config["build"]),
        ("local", config["build"].get("local", {})),
        ("artifact", the_artifact(config)),
        ("docker", the_artifact(config)["docker"]),
        ("release", the_release(config)),
    ]
    checks += [("portForward", forward) for forward in config.get("portForward", [])]
    for profile in config["profiles"]:
        checks.append(("profile", profile))
        checks += [("activation", activation) for activation in profile.get("activation", [])]
        checks += [("patch", patch) for patch in profile.get("patches", [])]
    for kind, block in checks:
        unknown = set(block) - KNOWN_KEYS[kind]
        assert not unknown, f"{kind}: unknown skaffold keys {sorted(unknown)}"


def test_skaffold_builds_the_image_the_chart_runs() -> None:
    config = skaffold()
    artifact = the_artifact(config)
    assert artifact["image"] == chart_values()["image"]["repository"]
    context = REPO_ROOT / artifact.get("context", ".")
    assert (context / artifact["docker"]["dockerfile"]).resolve() == BASE_DOCKERFILE
    # The repository root is the context the .dockerignore allowlist is written for.
    assert context.resolve() == REPO_ROOT


def test_skaffold_deploys_the_chart_with_the_built_image() -> None:
    config = skaffold()
    release = the_release(config)
    assert (REPO_ROOT / release["chartPath"]).resolve() == CHART
    suffix = image_variable_suffix(the_artifact(config)["image"])
    # Only repository and tag: a local build's digest is an image ID, not a registry digest,
    # so image.digest would make the kubelet pull a reference that exists nowhere.
    assert release["setValueTemplates"] == {
        "image.repository": f"{{{{.IMAGE_REPO_{suffix}}}}}",
        "image.tag": f"{{{{.IMAGE_TAG_{suffix}}}}}",
    }
    values = chart_values()
    for key in release["setValueTemplates"]:
        assert has_value(values, key), f"{key} is not a chart value"


@pytest.mark.parametrize("profile", ["dev", "keda"])
def test_skaffold_profiles_patch_existing_paths_and_values(profile: str) -> None:
    config = skaffold()
    (found,) = [p for p in config["profiles"] if p["name"] == profile]
    release = the_release(apply_patches(config, found["patches"]))
    for path in release.get("valuesFiles", []):
        assert (REPO_ROOT / path).is_file(), f"profile {profile}: no values file {path}"
    values = chart_values()
    for key in release.get("setValues", {}):
        assert has_value(values, key), f"profile {profile}: {key} is not a chart value"


def test_dev_profile_turns_on_with_skaffold_dev() -> None:
    (dev,) = [p for p in skaffold()["profiles"] if p["name"] == "dev"]
    assert {"command": "dev"} in dev["activation"]


def test_skaffold_port_forwards_name_rendered_services() -> None:
    config = skaffold()
    release = the_release(config)
    services = objects(render_layers(release=release["name"]), "Service")
    for forward in config["portForward"]:
        assert forward["resourceType"] == "service"
        assert forward["namespace"] == release["namespace"]
        service = services[forward["resourceName"]]
        assert forward["port"] in {p["port"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("profiles", [[], ["dev"], ["dev", "keda"], ["keda"]], ids=str)
def test_every_skaffold_deployment_renders(profiles: list[str]) -> None:
    """What `skaffold run|dev -p ...` would install, with a stand-in for the built image."""
    config = skaffold()
    for profile in config["profiles"]:
        if profile["name"] in profiles:
            config = apply_patches(config, profile["patches"])
    release = the_release(config)
    layers = [load(REPO_ROOT / path) for path in release.get("valuesFiles", [])]
    layers.append(set_values(release.get("setValues", {})))
    layers.append({"image": {"repository": "localhost/celeriac", "tag": "abc123"}})
    documents = render_layers(*layers, release=release["name"])
    for deployment in objects(documents, "Deployment").values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == "localhost/celeriac:abc123"
    # The chart's default is KEDA; the dev profile alone runs without it.
    keda_expected = "keda" in profiles or "dev" not in profiles
    assert bool(objects(documents, "ScaledObject")) == keda_expected


# --- k8s/ values files -----------------------------------------------------------------------


def test_dev_values_are_small_and_need_no_keda() -> None:
    documents = render_layers(load(VALUES_DEV))
    assert not objects(documents, "ScaledObject")
    assert not objects(documents, "PersistentVolumeClaim")
    (statefulset,) = objects(documents, "StatefulSet").values()
    assert not statefulset["spec"].get("volumeClaimTemplates")
    for deployment in objects(documents, "Deployment").values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        request = container["resources"]["requests"]["cpu"]
        name = deployment["metadata"]["name"]
        assert request.endswith("m"), name
        assert int(request[:-1]) <= 100, name


def test_e2e_values_autoscale_the_default_group_with_keda() -> None:
    documents = render_layers(load(VALUES_DEV), load(VALUES_E2E), release="e2e")
    (scaled,) = objects(documents, "ScaledObject").values()
    assert scaled["spec"]["minReplicaCount"] == 1
    assert scaled["spec"]["maxReplicaCount"] == 4
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "metrics-api"


def test_production_values_render_two_autoscaled_groups_with_monitoring() -> None:
    documents = render_layers(load(VALUES_PRODUCTION))
    scaled = objects(documents, "ScaledObject")
    assert set(scaled) == {"celeriac-worker-default", "celeriac-worker-cpu"}
    assert scaled["celeriac-worker-cpu"]["spec"]["minReplicaCount"] == 0
    kinds = {d["kind"] for d in documents.objects}
    assert {"ServiceMonitor", "PrometheusRule", "Ingress", "NetworkPolicy"} <= kinds
    assert objects(documents, "PersistentVolumeClaim") or any(
        s["spec"].get("volumeClaimTemplates") for s in objects(documents, "StatefulSet").values()
    )
    workers = objects(documents, "Deployment")
    default_env = {
        e["name"]: e.get("value")
        for e in workers["celeriac-worker-default"]["spec"]["template"]["spec"]["containers"][0][
            "env"
        ]
    }
    assert default_env["CELERIAC_APP"] == "mytasks.celery:app"


def test_own_tasks_values_run_the_users_image_and_app() -> None:
    values = load(VALUES_OWN_TASKS)
    documents = render_layers(values)
    image = f"{values['image']['repository']}:{values['image']['tag']}"
    deployments = objects(documents, "Deployment")
    assert {"celeriac-worker-default", "celeriac-worker-cpu", "celeriac-api"} <= set(deployments)
    for deployment in deployments.values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == image
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["CELERIAC_APP"] == values["app"]


@pytest.mark.parametrize(
    "files",
    [[VALUES_DEV], [VALUES_DEV, VALUES_E2E], [VALUES_PRODUCTION], [VALUES_OWN_TASKS]],
    ids=lambda files: "+".join(path.name for path in files),
)
@pytest.mark.parametrize("version", ["1.29", "1.37"])
def test_k8s_values_render_objects_valid_for_kubernetes(files: list[Path], version: str) -> None:
    """Built-in kinds against Kubernetes' strict schemas (CRD kinds: the chart tests)."""
    found, validated = [], 0
    for document in render_layers(*(load(path) for path in files)).objects:
        try:
            problems = errors(document, version)
        except SchemaMissing:
            assert "." in document["apiVersion"].split("/")[0], document["kind"]
            continue
        validated += 1
        found += [f"{document['kind']} {document['metadata']['name']}: {p}" for p in problems]
    assert not found
    assert validated >= 10
