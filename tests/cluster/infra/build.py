"""Build the local control plane's binaries from the pinned wrapper modules (issue 9).

``python -m tests.cluster.infra.build [component...]`` builds etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and KEDA's operator and metrics adapter with the Go
toolchain from ``tests/cluster/go/*`` into ``${XDG_CACHE_HOME:-~/.cache}/celeriac/cluster/
<component>-<version>-<key>/<component>``, outside git. A directory that exists is a finished
build (each is built into a temporary directory and renamed into place), so a second run skips
it. The version is the one the wrapper's ``go.mod`` requires and the key a digest of the
wrapper's files and the build's flags, so bumping a pin or changing a flag rebuilds.

Flags follow upstream (tests/cluster/README.md): static (``CGO_ENABLED=0``), ``-trimpath``,
``-s -w``, Kubernetes' build tags and version stamps, KEDA's version stamps; ``-mod=readonly``
so a build uses ``go.sum`` as committed. Run it under ``nice -n 19`` next to other work.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

GO_ROOT = Path(__file__).resolve().parent.parent / "go"

K8S_BUILD_DATE = "2026-05-12T09:50:49Z"
KEDA_COMMIT = "68a5b5028f35b22d50597c69819ab32c4e92f21a"  # the v2.20.2 tag (shared/keda-crds)
K8S_TAGS = "selinux,notest,grpcnotrace"


@dataclass(frozen=True)
class Component:
    name: str  # also the binary's file name
    wrapper: str  # directory under tests/cluster/go
    module: str  # the pinned module whose version keys the cache
    package: str  # the main package to build
    tags: str = ""

    def version(self) -> str:
        """The version of ``module`` that the wrapper's go.mod requires."""
        text = (GO_ROOT / self.wrapper / "go.mod").read_text()
        match = re.search(rf"^(?:require)?\s*{re.escape(self.module)}\s+(v\S+)", text, re.MULTILINE)
        if not match:
            raise RuntimeError(f"{self.module} is not required in go/{self.wrapper}/go.mod")
        return match.group(1)

    def ldflags(self) -> str:
        flags = ["-s", "-w"]
        version = self.version()
        if self.wrapper == "kubernetes":
            major, minor = version.lstrip("v").split(".")[:2]
            for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
                flags += [
                    f"-X {pkg}.gitVersion={version}",
                    f"-X {pkg}.gitMajor={major}",
                    f"-X {pkg}.gitMinor={minor}",
                    f"-X {pkg}.buildDate={K8S_BUILD_DATE}",
                ]
        elif self.wrapper == "containerd":
            pkg = "github.com/containerd/containerd/v2/version"
            flags += [
                f"-X {pkg}.Version={version}",
                f"-X {pkg}.Package=github.com/containerd/containerd/v2",
            ]
        elif self.wrapper == "registry":
            flags += [f"-X {_REGISTRY}/version.version={version}"]
        elif self.wrapper == "coredns":
            flags += [f"-X github.com/coredns/coredns/coremain.GitCommit={version}"]
        elif self.wrapper == "keda":
            pkg = "github.com/kedacore/keda/v2/version"
            flags += [f"-X {pkg}.Version={version.lstrip('v')}"]
            flags += [f"-X {pkg}.GitCommit={KEDA_COMMIT}"]
        return " ".join(flags)


_K8S = "k8s.io/kubernetes"
_KEDA = "github.com/kedacore/keda/v2"
_CONTAINERD = "github.com/containerd/containerd/v2"
_COREDNS = "github.com/coredns/coredns"
_REGISTRY = "github.com/distribution/distribution/v3"
COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        Component("etcd", "etcd", "go.etcd.io/etcd/server/v3", "go.etcd.io/etcd/server/v3"),
        Component("kube-apiserver", "kubernetes", _K8S, f"{_K8S}/cmd/kube-apiserver", K8S_TAGS),
        Component(
            "kube-controller-manager",
            "kubernetes",
            _K8S,
            f"{_K8S}/cmd/kube-controller-manager",
            K8S_TAGS,
        ),
        Component("kube-scheduler", "kubernetes", _K8S, f"{_K8S}/cmd/kube-scheduler", K8S_TAGS),
        Component("kubelet", "kubernetes", _K8S, f"{_K8S}/cmd/kubelet", K8S_TAGS),
        Component("kube-proxy", "kubernetes", _K8S, f"{_K8S}/cmd/kube-proxy", K8S_TAGS),
        Component("containerd", "containerd", _CONTAINERD, f"{_CONTAINERD}/cmd/containerd"),
        Component("ctr", "containerd", _CONTAINERD, f"{_CONTAINERD}/cmd/ctr"),
        Component(
            "containerd-shim-runc-v2",
            "containerd",
            _CONTAINERD,
            f"{_CONTAINERD}/cmd/containerd-shim-runc-v2",
        ),
        # These two: the wrapper's own main.go, upstream's main with only the plugins or drivers
        # the cluster uses (their cloud SDKs were most of the build).
        Component("coredns", "coredns", _COREDNS, "."),
        Component("registry", "registry", _REGISTRY, "."),
        Component("keda-operator", "keda", _KEDA, f"{_KEDA}/cmd/operator"),
        Component("keda-adapter", "keda", _KEDA, f"{_KEDA}/cmd/adapter"),
    )
}


CONTROL_PLANE = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
KEDA = ["keda-operator", "keda-adapter"]
NODE = ["kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr", "coredns"]
REGISTRY = ["registry"]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "celeriac" / "cluster"


def build_key(component: Component) -> str:
    """A digest of what decides the binary: the wrapper's files (go.mod, go.sum, a main.go) and
    the build's package, tags and flags."""
    digest = hashlib.sha256()
    for path in sorted((GO_ROOT / component.wrapper).iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update("\0".join((component.package, component.tags, component.ldflags())).encode())
    return digest.hexdigest()[:12]


def binary_path(name: str) -> Path:
    """Where component ``name``'s binary is (or will be) cached: a pin, a flag or the wrapper's
    main.go changed means another directory, so a build."""
    component = COMPONENTS[name]
    return cache_root() / f"{name}-{component.version()}-{build_key(component)}" / name


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GOFLAGS="-mod=readonly -buildvcs=false", GOTOOLCHAIN="local", CGO_ENABLED="0")
    return env


def find_go() -> str:
    go = shutil.which("go")
    if go is None and Path("/usr/local/go/bin/go").exists():
        go = "/usr/local/go/bin/go"
    if go is None:
        raise RuntimeError("the Go toolchain (go >= 1.26) is not on PATH")
    return go


def build_one(name: str) -> tuple[Path, float | None]:
    """Build component ``name`` unless cached; its binary and the build's seconds (None: cached)."""
    component = COMPONENTS[name]
    target = binary_path(name)
    if target.is_file():
        return target, None
    final_dir = target.parent
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=final_dir.parent, prefix=f".{final_dir.name}.") as tmp:
        command = [find_go(), "build", "-trimpath"]
        if component.tags:
            command += ["-tags", component.tags]
        command += ["-ldflags", component.ldflags(), "-o", str(Path(tmp) / name), component.package]
        subprocess.run(command, cwd=GO_ROOT / component.wrapper, env=go_env(), check=True)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, final_dir)
        except OSError:
            if not target.is_file():  # else a concurrent build finished first: keep that one
                raise
    return target, time.monotonic() - started


def ensure_built(names: list[str] | None = None) -> dict[str, Path]:
    """Build what is not cached (quietly when everything is); name -> binary path."""
    return {name: build_one(name)[0] for name in names or list(COMPONENTS)}


def report(name: str) -> None:
    """Build ``name`` unless cached, saying which and how long."""
    if not binary_path(name).is_file():
        print(f"{name}: building...", flush=True)
    path, seconds = build_one(name)
    state = "cached (warm)" if seconds is None else f"built (not cached) in {seconds:.1f}s"
    print(f"{name} {COMPONENTS[name].version()}: {state} -> {path}", flush=True)


# Relative cold build cost of each wrapper (tests/cluster/README.md "Building").
WRAPPER_WEIGHT = {"kubernetes": 5, "keda": 4, "coredns": 2, "etcd": 1, "containerd": 1}


def build_group(names: list[str]) -> None:
    """One wrapper's components, in order: they share its compiled packages."""
    for name in names:
        report(name)


def build_in_parallel(names: list[str], jobs: int) -> None:
    """Build ``names`` with ``jobs`` Go builds at a time, one wrapper's components in order (they
    share its packages). A single build leaves a core idle in its links and in the narrow parts
    of its package graph; a second one fills that time. Largest wrappers first."""
    by_wrapper: dict[str, list[str]] = {}
    for name in names:
        by_wrapper.setdefault(COMPONENTS[name].wrapper, []).append(name)
    order = sorted(by_wrapper, key=lambda wrapper: -WRAPPER_WEIGHT.get(wrapper, 0))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(build_group, by_wrapper[wrapper]) for wrapper in order]
        for future in futures:
            future.result()  # the first failure's exception, after the others finished


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster.infra.build", description=__doc__
    )
    parser.add_argument("components", nargs="*", metavar="component", help=", ".join(COMPONENTS))
    parser.add_argument(
        "--jobs", type=int, default=2, help="Go builds at a time (default 2: one per core here)"
    )
    args = parser.parse_args(argv)
    names: list[str] = args.components or list(COMPONENTS)
    unknown = [name for name in names if name not in COMPONENTS]
    if unknown:
        parser.error(f"unknown component(s) {', '.join(unknown)}; known: {', '.join(COMPONENTS)}")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, not {args.jobs}")
    total = time.monotonic()
    build_in_parallel(names, args.jobs)
    print(f"total {time.monotonic() - total:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
