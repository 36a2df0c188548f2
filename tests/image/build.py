"""Build the celeriac images with podman, from a base made of Debian's packages (issue 17).

``python -m tests.image.build`` (``make image``) builds services/base/Dockerfile as
``ghcr.io/celeriac/celeriac:<version>`` and each services/<component>/Dockerfile as
``ghcr.io/celeriac/celeriac-<component>:<version>``, then writes the image's SBOM (CycloneDX,
by syft). ``images`` builds the images alone (``make images``: what ``make e2e`` runs);
``base`` only the base image; ``sbom`` only the SBOM of a built image; ``syft`` only syft.

- The builder is Debian's podman (rootful, runc: Debian's crun refuses this hybrid cgroup v1
  machine), configured by files of this project under the cache (``CONTAINERS_CONF``,
  ``CONTAINERS_STORAGE_CONF``): its own storage, cgroupfs, a file events log, ``nofile`` within
  the machine's limit. Nothing of the machine's container configuration is changed.
- No public container registry is reachable here, so the Dockerfile's ``BASE_IMAGE`` is a base
  made by mmdebstrap from Debian bookworm's packages (Python 3.11, python3-venv,
  ca-certificates, tini) and imported once: its tag is a hash of those inputs, and an image of
  that tag in the project's storage is reused.
- The build's RUN steps use the machine's network (``--network=host``: no bridge, no rule of
  the machine's firewall touched), so pip reaches PyPI as the machine does, with the machine's
  pip settings and CA bundle passed as build secrets that no layer keeps.
- Containers are placed under this process's own cgroup (``--cgroup-parent``).

Everything lands under ``${XDG_CACHE_HOME:-~/.cache}/celeriac/images`` (storage, the syft
binary, the SBOM), never in git.
"""

from __future__ import annotations

import argparse
import configparser
import functools
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent

IMAGE_REPOSITORY = "ghcr.io/celeriac/celeriac"
COMPONENTS = ("worker", "beat", "api", "exporter")

# The base: Debian bookworm's own Python 3.11 and tini (the Dockerfile then skips its apt step).
BASE_SUITE = "bookworm"
BASE_VARIANT = "minbase"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "tini")
BASE_REPOSITORY = "localhost/celeriac-base"
REDIS_PACKAGES = ("redis-server", "redis-sentinel")
REDIS_REPOSITORY = "localhost/celeriac-redis"
# The machine's Debian mirrors, as apt on the machine reaches them.
APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")

# syft writes the SBOM: one static binary from its Go module, pinned here.
SYFT_MODULE = "github.com/anchore/syft"
SYFT_VERSION = "v1.57.2"

# Debian packages the build needs: command -> package.
DEBIAN_TOOLS = {"podman": "podman", "runc": "runc", "mmdebstrap": "mmdebstrap"}

# Processes per container. runc sets it without CAP_SYS_RESOURCE: on the project's machines
# 32768 works, the machine's own 96367 (and 65536) fail with "error setting rlimit type 6".
NPROC_LIMIT = 32768


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "celeriac" / "images"


def project_version() -> str:
    with (REPO_ROOT / "pyproject.toml").open("rb") as fh:
        version: str = tomllib.load(fh)["project"]["version"]
    return version


def image_tag(component: str | None = None, version: str | None = None) -> str:
    name = IMAGE_REPOSITORY if component is None else f"{IMAGE_REPOSITORY}-{component}"
    return f"{name}:{version or project_version()}"


def log(message: str) -> None:
    print(f"[image] {message}", file=sys.stderr, flush=True)


# --- tools -----------------------------------------------------------------------------------


def install_missing_tools() -> None:
    """apt-get install what is missing (as .ci/run does for its tools); root only."""
    needed = sorted({pkg for cmd, pkg in DEBIAN_TOOLS.items() if shutil.which(cmd) is None})
    if not needed:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing {', '.join(needed)}: apt-get install {' '.join(needed)}")
    log(f"apt-get install {' '.join(needed)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *needed],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


# Where the machine installs Go, should PATH not name it.
GO_CANDIDATE = Path("/usr/local/go/bin/go")


def go_binary() -> str:
    found = shutil.which("go") or (str(GO_CANDIDATE) if GO_CANDIDATE.exists() else None)
    if found is None:
        raise SystemExit(f"the SBOM needs Go >= 1.26.8 (syft {SYFT_VERSION}'s go.mod) on PATH")
    return found


def syft_path() -> Path:
    """Where syft is, once built: a finished build is a directory of its own."""
    return cache_dir() / "tools" / f"syft-{SYFT_VERSION}" / "syft"


def syft_binary() -> Path:
    """syft built once from its Go module into the cache."""
    binary = syft_path()
    folder = binary.parent
    if binary.exists():
        return binary
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="syft-", dir=folder.parent))
    log(f"building syft {SYFT_VERSION} from its Go module (a few minutes, once)")
    env = {**os.environ, "CGO_ENABLED": "0", "GOBIN": str(staging), "GOFLAGS": "-mod=mod"}
    subprocess.run(
        [
            go_binary(),
            "install",
            "-trimpath",
            "-ldflags",
            f"-s -w -X main.version={SYFT_VERSION}",
            f"{SYFT_MODULE}/cmd/syft@{SYFT_VERSION}",
        ],
        env=env,
        check=True,
        cwd=staging,
    )
    try:
        staging.rename(folder)
    except OSError:
        shutil.rmtree(staging)
        if not binary.exists():  # else a concurrent build finished first: keep that one
            raise
    return binary


# --- podman, configured by the project --------------------------------------------------------


def cgroup_parent(purpose: str = "run") -> str:
    """A cgroup under this process's own memory cgroup (v1) or unified cgroup.

    Builds and containers get different ones: a build's RUN step is run in the cgroup parent
    itself, and cgroup v1 refuses its device rules ("a *:* rwm": invalid argument) while that
    cgroup has children, such as the cgroups of running containers.
    """
    paths: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            paths[controller] = path
    own = paths.get("memory") or paths.get("") or "/"
    return f"{own.rstrip('/')}/celeriac-image-{purpose}"


def container_ulimits() -> list[str]:
    """Open files and processes within what runc may set here: without CAP_SYS_RESOURCE it
    cannot raise them to podman's defaults (1048576 files; the container fails to start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], NPROC_LIMIT)
    return [f"nofile={soft}:{hard}", f"nproc={nproc}:{nproc}"]


def write_if_changed(path: Path, text: str) -> None:
    """Replace ``path`` atomically, and only when its text changes: a podman starting in
    another process never reads a half-written file."""
    if path.exists() and path.read_text() == text:
        return
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(text)
    staging.replace(path)


@functools.cache
def podman_env() -> dict[str, str]:
    """The environment that points podman at the project's own configuration files."""
    root = cache_dir()
    run = Path("/run/celeriac-image") if os.access("/run", os.W_OK) else root / "run"
    conf = root / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    (root / "networks").mkdir(exist_ok=True)
    containers_conf = conf / "containers.conf"
    write_if_changed(
        containers_conf,
        "[containers]\n"
        f"default_ulimits = {json.dumps(container_ulimits())}\n"
        'log_driver = "k8s-file"\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        f'events_logfile_path = "{run}/events.log"\n'
        f'tmp_dir = "{run}/libpod"\n'
        "[network]\n"
        f'network_config_dir = "{root}/networks"\n',
    )
    storage_conf = conf / "storage.conf"
    write_if_changed(
        storage_conf,
        f'[storage]\ndriver = "overlay"\ngraphroot = "{root}/storage"\nrunroot = "{run}/storage"\n',
    )
    return {
        **os.environ,
        "CONTAINERS_CONF": str(containers_conf),
        "CONTAINERS_STORAGE_CONF": str(storage_conf),
    }


def podman(
    *args: str, capture: bool = False, check: bool = True, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args],
        env=podman_env(),
        capture_output=capture,
        text=True,
        check=check,
        timeout=timeout,
    )


def image_exists(reference: str) -> bool:
    return podman("image", "exists", reference, check=False).returncode == 0


# --- the base from Debian's packages ----------------------------------------------------------


def base_key(packages: Sequence[str] | None = None) -> str:
    """A hash of everything that makes a Debian image: suite, variant, packages, mirrors."""
    inputs = {
        "suite": BASE_SUITE,
        "variant": BASE_VARIANT,
        "packages": sorted(BASE_PACKAGES if packages is None else packages),
        "sources": APT_SOURCES.read_text() if APT_SOURCES.exists() else "",
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def base_image() -> str:
    """The local base image's reference: imported once, then found in the project's storage."""
    return debian_image(BASE_REPOSITORY, BASE_PACKAGES, ['CMD ["/bin/bash"]'])


def redis_image() -> str:
    """Redis from Debian's package, standing in for the chart's public Redis image on the local
    cluster's node (no public registry here): the chart runs ``redis-server`` and
    ``redis-sentinel`` through ``sh``, as with the official image."""
    return debian_image(REDIS_REPOSITORY, REDIS_PACKAGES, ['CMD ["redis-server"]'])


def debian_image(repository: str, packages: Sequence[str], changes: Sequence[str]) -> str:
    """An image of Debian's ``packages`` made by mmdebstrap and imported, with ``changes``
    (Dockerfile instructions) applied; tagged by ``base_key`` and made only once."""
    reference = f"{repository}:{BASE_SUITE}-{base_key(packages)}"
    if image_exists(reference):
        return reference
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="celeriac-base-") as scratch:
        rootfs = Path(scratch) / "rootfs.tar"
        mirrors = [str(APT_SOURCES)] if APT_SOURCES.exists() else []
        log(f"mmdebstrap {BASE_SUITE} {BASE_VARIANT} + {', '.join(packages)}")
        subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                f"--variant={BASE_VARIANT}",
                f"--include={','.join(packages)}",
                # No apt lists, caches or docs the image would carry for nothing.
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                "--aptopt=APT::Install-Recommends false",
                "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/*",
                BASE_SUITE,
                str(rootfs),
                *mirrors,
            ],
            check=True,
        )
        change_options = [
            option
            for change in (
                *changes,
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            for option in ("--change", change)
        ]
        podman("import", *change_options, str(rootfs), reference, capture=True)
    log(f"{reference} made in {time.monotonic() - started:.0f} s")
    return reference


# --- the images -------------------------------------------------------------------------------


def pip_config_files() -> list[Path]:
    """pip's configuration files on Linux, in the order pip reads them (later ones win)."""
    home = Path.home()
    xdg_dirs = os.environ.get("XDG_CONFIG_DIRS") or "/etc/xdg"
    files = [Path(d) / "pip" / "pip.conf" for d in xdg_dirs.split(":") if d]
    files += [Path("/etc/pip.conf"), home / ".pip" / "pip.conf"]
    files.append(Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "pip" / "pip.conf")
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    return files


def pip_settings() -> dict[str, str]:
    """The machine's pip settings as pip itself would read them: its configuration files'
    [global] and [install] sections, then PIP_* variables (read here, since the venv that runs
    this may have no pip)."""
    settings: dict[str, str] = {}
    for path in pip_config_files():
        config = configparser.ConfigParser(interpolation=None)
        if path.is_file():
            config.read(path)
        for section in ("global", "install"):
            if config.has_section(section):
                settings.update(config.items(section))
    for name, value in os.environ.items():
        if name.startswith("PIP_") and name != "PIP_CONFIG_FILE":
            settings[name[4:].lower().replace("_", "-")] = value
    return settings


# Settings that name something on the machine (a folder of wheels) or do not matter in a build.
LOCAL_PIP_SETTINGS = {"find-links", "cert", "client-cert", "disable-pip-version-check"}


def pip_secrets(folder: Path) -> list[str]:
    """``--secret`` options: the machine's pip settings as a pip.conf, and its CA bundle."""
    settings = pip_settings()
    config = configparser.ConfigParser(interpolation=None)
    config["global"] = {k: v for k, v in settings.items() if k not in LOCAL_PIP_SETTINGS}
    secrets: list[str] = []
    cert = settings.get("cert") or os.environ.get("SSL_CERT_FILE", "")
    if cert and Path(cert).is_file():
        config["global"]["cert"] = "/run/secrets/pip-ca"
        secrets += ["--secret", f"id=pip-ca,src={cert}"]
    pip_conf = folder / "pip.conf"
    with pip_conf.open("w") as fh:
        config.write(fh)
    return [*secrets, "--secret", f"id=pip.conf,src={pip_conf}"]


@dataclass(frozen=True)
class Built:
    image: str
    components: dict[str, str]
    base: str
    seconds: float


def common_build_options() -> list[str]:
    return [
        "--network=host",
        f"--cgroup-parent={cgroup_parent('build')}",
        "--pull=never",
        "--layers",
        "--format=oci",
    ]


def build_images(
    version: str | None = None, revision: str | None = None, *, no_cache: bool = False
) -> Built:
    """The base image and the component images, tagged with the project's version;
    ``no_cache`` rebuilds every layer (not the base)."""
    version = version or project_version()
    started = time.monotonic()
    base = base_image()
    image = image_tag(version=version)
    revision = revision or git_revision()
    references = [*(image_tag(c, version) for c in COMPONENTS), image]  # children first
    before = image_ids(references)
    with tempfile.TemporaryDirectory(prefix="celeriac-pip-") as scratch:
        log(f"building {image} on {base}")
        podman(
            "build",
            *common_build_options(),
            *(["--no-cache"] if no_cache else []),
            *pip_secrets(Path(scratch)),
            "--file",
            str(REPO_ROOT / "services" / "base" / "Dockerfile"),
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--build-arg",
            f"VERSION={version}",
            "--build-arg",
            f"REVISION={revision}",
            "--tag",
            image,
            str(REPO_ROOT),
        )
    components: dict[str, str] = {}
    for component in COMPONENTS:
        tag = image_tag(component, version)
        podman(
            "build",
            *common_build_options(),
            "--build-arg",
            f"CELERIAC_IMAGE={image}",
            "--tag",
            tag,
            str(REPO_ROOT / "services" / component),
        )
        components[component] = tag
    remove_replaced(before, image_ids(references))
    seconds = time.monotonic() - started
    log(f"built {image} and {len(components)} component images in {seconds:.1f} s")
    return Built(image, components, base, seconds)


def image_ids(references: Sequence[str]) -> list[str]:
    """The image each reference names now, in order (none for a reference not built yet)."""
    ids = []
    for reference in references:
        result = podman(
            "image", "inspect", "--format", "{{.Id}}", reference, capture=True, check=False
        )
        if result.returncode == 0:
            ids.append(result.stdout.strip())
    return ids


def remove_replaced(before: Sequence[str], after: Sequence[str]) -> None:
    """Remove the images a rebuild took the tags from, children first. Not ``image prune``:
    the build cache is untagged images too (the builder stage's layers above all), and pruning
    it made every build a cold one."""
    for image_id in before:
        if image_id not in after:
            podman("rmi", image_id, capture=True, check=False)


def git_revision() -> str:
    result = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or "unknown"


def image_size_bytes(reference: str) -> int:
    out = podman("image", "inspect", "--format", "{{.Size}}", reference, capture=True).stdout
    return int(out.strip())


def sbom(image: str, output: Path) -> Path:
    """A CycloneDX JSON SBOM of ``image``, by syft from the image saved as an OCI archive."""
    syft = syft_binary()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="celeriac-sbom-") as scratch:
        archive = Path(scratch) / "image.tar"
        podman("save", "--quiet", "--format", "oci-archive", "--output", str(archive), image)
        # Packages only (Debian's and Python's), not an entry for every file of the image.
        env = {
            **os.environ,
            "SYFT_CHECK_FOR_APP_UPDATE": "false",
            "SYFT_FILE_METADATA_SELECTION": "none",
            "SYFT_FILE_EXECUTABLE_SELECTION": "none",
        }
        subprocess.run(
            [
                str(syft),
                "scan",
                "--quiet",
                f"oci-archive:{archive}",
                "-o",
                f"cyclonedx-json={output}",
            ],
            env=env,
            check=True,
        )
    log(f"SBOM of {image}: {output}")
    return output


def sbom_path(version: str | None = None) -> Path:
    return cache_dir() / f"celeriac-{version or project_version()}.cdx.json"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.image.build", description=__doc__)
    parser.add_argument(
        "what",
        nargs="?",
        choices=["all", "images", "base", "sbom", "syft"],
        default="all",
        help="all (default): the images and the SBOM; images: without the SBOM; "
        "syft: only build the SBOM's tool",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="rebuild every layer of the image (not the base)"
    )
    args = parser.parse_args(argv)
    if args.what == "syft":  # Go alone: runs beside an image build, never a second apt-get
        print(syft_binary())
        return 0
    install_missing_tools()
    if args.what == "base":
        print(base_image())
        return 0
    if args.what in ("all", "images"):
        built = build_images(no_cache=args.no_cache)
        size = image_size_bytes(built.image)
        log(f"{built.image}: {size / 1e6:.0f} MB")
    if args.what != "images":
        print(sbom(image_tag(), sbom_path()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
