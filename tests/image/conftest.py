"""The `image` tests: the images `make image` builds, run in real runc containers by podman.

The build runs once per session (``built``): its layers and the Debian-made base are cached in
the project's storage under ``~/.cache/celeriac/images``, so a second session rebuilds nothing.
Without podman, runc or mmdebstrap the tests skip with how to get them (CI fails instead). They
need root (rootful podman); every container is removed when its test ends.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.image import build
from tests.support import missing, require_tool

HOW_TO_GET = "apt-get install podman runc mmdebstrap (as root), then make test-image"

# As the chart runs every container: a read-only root filesystem with a writable /tmp, no
# capabilities, no privilege gain, UID 10001 (the image's USER). The machine's network alone:
# containers reach the test's redis-server on 127.0.0.1, nothing else.
SECURE_RUN_OPTIONS = (
    "--network=host",
    "--read-only",
    "--tmpfs=/tmp:rw,nosuid,nodev,size=64m,mode=1777",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
)


@pytest.fixture(scope="session")
def built() -> build.Built:
    for tool in build.DEBIAN_TOOLS:
        require_tool(tool, HOW_TO_GET)
    if os.geteuid() != 0:
        missing("root", "the image tests run rootful podman: run make test-image as root")
    return build.build_images()


@dataclass
class Containers:
    """Starts containers of the built images; removes every one it started."""

    names: list[str] = field(default_factory=list)

    def run(
        self,
        image: str,
        *args: str,
        env: dict[str, str] | None = None,
        entrypoint: str | None = None,
        detach: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        name = f"celeriac-test-{secrets.token_hex(4)}"
        self.names.append(name)
        options = [*SECURE_RUN_OPTIONS, f"--cgroup-parent={build.cgroup_parent()}"]
        options += ["--name", name, "--detach" if detach else "--rm"]
        for key, value in (env or {}).items():
            options += ["--env", f"{key}={value}"]
        if entrypoint is not None:
            options += ["--entrypoint", entrypoint]
        result = build.podman(
            "run", *options, image, *args, capture=True, check=False, timeout=timeout
        )
        if detach:
            assert result.returncode == 0, result.stderr
            result.stdout = name
        return result

    def exec(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        return build.podman("exec", name, *args, capture=True, check=False, timeout=60)

    def logs(self, name: str) -> str:
        result = build.podman("logs", name, capture=True, check=False, timeout=60)
        return result.stdout + result.stderr

    def state(self, name: str, field: str) -> str:
        result = build.podman(
            "inspect", "--format", f"{{{{.State.{field}}}}}", name, capture=True, timeout=60
        )
        return result.stdout.strip()

    def remove_all(self) -> None:
        if self.names:
            build.podman(
                "rm", "--force", "--time", "0", "--ignore", *self.names, capture=True, check=False
            )


@pytest.fixture
def containers(built: build.Built) -> Iterator[Containers]:
    started = Containers()
    yield started
    started.remove_all()
