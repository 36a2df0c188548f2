"""The container side of the process kubelet: a root helper that becomes the container's process.

Run as a script (standard library only), by root:

    python sandbox.py run CONFIG            set up and exec the container's command
    python sandbox.py enter CONFIG PID CMD  run CMD inside container PID (exec probes, preStop)

``run``: join the pod's network namespace, unshare mount and UTS namespaces, build the root:
an overlay of the host's / (upper layer on a tmpfs: writes never reach the host), a /dev of its
own, a tmpfs over /root with /root/.pyenv bound back (the venv's python lives there and /root is
mode 700), /etc/hosts and /etc/resolv.conf of the pod, the volumes at their paths, the provided
host folders (the checkout and venv) at theirs, read-only, reachable by every user; the root made
read-only if asked; join the cgroups; chroot; setgroups/setgid/setuid; no_new_privs; exec.
A failure before exec is written to CONFIG's ``error_file`` and exits 128; the descriptor
``started_fd`` (close-on-exec) tells the agent when the command runs.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source} on {target} ({fstype or 'bind'})",
    )


def bind(source: str, target: str, readonly: bool, recursive: bool = False) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    elif not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    if readonly:
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def open_to_others(root: str, target: str) -> None:
    """Let every user through the folders above ``target`` inside the container (a copy in the
    overlay's upper layer, or a folder the bind made): the host's may be closed (mode 700)."""
    folder = os.path.dirname(target)
    while folder.startswith(root + "/"):
        mode = os.stat(folder).st_mode
        if not mode & 0o001:
            os.chmod(folder, (mode & 0o7777) | 0o011)
        folder = os.path.dirname(folder)


def inside(root: str, path: str) -> str:
    """The container's ``path`` as a path under ``root``, symlinks followed as the container
    sees them (an absolute link starts again at ``root``): /var/run -> /run must not lead a
    mount out to the host's /run."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    resolved, hops = root, 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            resolved = os.path.dirname(resolved) if resolved != root else root
            continue
        candidate = os.path.join(resolved, part)
        if not os.path.islink(candidate):
            resolved = candidate
            continue
        hops += 1
        if hops > 40:
            raise OSError(40, f"too many levels of symbolic links in {path}")
        link = os.readlink(candidate)
        if link.startswith("/"):
            resolved = root
        parts = [p for p in link.split("/") if p not in ("", ".")] + parts
    return resolved


def setns(path: str, kind: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _check(_libc.setns(fd, kind), f"setns {path}")
    finally:
        os.close(fd)


def build_root(config: dict[str, Any]) -> str:
    base = config["base"]
    mount("tmpfs", base, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    for name in ("upper", "work", "root"):
        os.mkdir(os.path.join(base, name))
    root = os.path.join(base, "root")
    mount("overlay", root, "overlay", 0, f"lowerdir=/,upperdir={base}/upper,workdir={base}/work")
    bind("/proc", root + "/proc", False, recursive=True)
    bind("/sys", root + "/sys", True)
    mount("tmpfs", root + "/dev", "tmpfs", MS_NOSUID, "mode=755")
    for device in DEVICES:
        bind("/dev/" + device, f"{root}/dev/{device}", False)
    bind("/dev/pts", root + "/dev/pts", False)
    os.mkdir(root + "/dev/shm")
    mount("tmpfs", root + "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0")):
        os.symlink(target, f"{root}/dev/{name}")
    os.symlink("/proc/self/fd/1", root + "/dev/stdout")
    os.symlink("/proc/self/fd/2", root + "/dev/stderr")
    bind(config["termination_log"], root + "/dev/termination-log", False)
    mount("tmpfs", root + "/root", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    if os.path.isdir("/root/.pyenv"):
        bind("/root/.pyenv", root + "/root/.pyenv", True)
    bind(config["hosts"], root + "/etc/hosts", True)
    bind(config["resolv"], root + "/etc/resolv.conf", True)
    for volume in config["mounts"]:
        bind(volume["source"], inside(root, volume["target"]), volume["readonly"])
    for folder in config["provided"]:
        target = inside(root, folder)
        bind(folder, target, True)
        open_to_others(root, target)
    if config["read_only_root"]:
        mount(None, root + "/root", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    return root


def join_cgroups(config: dict[str, Any]) -> None:
    for procs in config["cgroups"]:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))


def become(config: dict[str, Any]) -> None:
    """The container's identity: capabilities, groups, group, user, no_new_privs."""
    if config["drop_caps"]:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
        for cap in range(last + 1):
            _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    os.setgroups(config["groups"])
    os.setgid(config["gid"])
    os.setuid(config["uid"])
    if config["no_new_privs"]:
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def run(config: dict[str, Any]) -> None:
    setns(config["netns"], CLONE_NEWNET)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    hostname = config["hostname"].encode()
    _check(_libc.sethostname(hostname, len(hostname)), "sethostname")
    root = build_root(config)
    join_cgroups(config)
    os.chroot(root)
    os.chdir(config["cwd"])
    become(config)
    os.execve(config["argv"][0], config["argv"], config["env"])


def enter(config: dict[str, Any], pid: int, argv: list[str]) -> None:
    join_cgroups(config)
    for kind, flag in (("net", CLONE_NEWNET), ("uts", CLONE_NEWUTS), ("mnt", CLONE_NEWNS)):
        setns(f"/proc/{pid}/ns/{kind}", flag)
    os.chroot(f"/proc/{pid}/root")
    os.chdir(config["cwd"])
    become(config)
    os.execve(argv[0], argv, config["env"])


def main(argv: list[str]) -> None:
    mode, path = argv[1], argv[2]
    with open(path) as f:
        config = json.load(f)
    if mode == "run":  # closed by the exec: the agent reads EOF once the command runs
        os.set_inheritable(config["started_fd"], False)
    try:
        if mode == "run":
            run(config)
        else:
            enter(config, int(argv[3]), argv[4:])
    except OSError as exc:
        message = f"{mode}: {exc}"
        print(f"process kubelet sandbox: {message}", file=sys.stderr, flush=True)
        if mode == "run":
            with open(config["error_file"], "w") as f:
                f.write(message)
        os._exit(128)


if __name__ == "__main__":
    main(sys.argv)
