"""An OCI registry on the test network (issue 17, item 2): the CNCF distribution registry.

``with Registry(state_dir, ca) as registry:`` runs ``registry`` (distribution v3, built from its
module like the control plane) on the bridge's host address, ``10.231.0.1:<free port>``, with
TLS from the cluster's CA and basic authentication (an htpasswd file of one bcrypt entry: the
only format it reads), as a private registry of a user's cluster is. ``push`` copies an image of
the project's podman storage there (``podman push``); a node pulls it with the credentials of
an ``imagePullSecrets`` entry (``docker_config``), trusting the CA through containerd's hosts
configuration (``Node(registry=...)``).
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import yaml

from celeriac.testing import Child, free_port, wait_until
from tests.cluster.infra import build, network
from tests.cluster.infra.lifecycle import Lifecycle
from tests.cluster.infra.pki import KeyPair, issue_cert
from tests.image import build as image_build

USER = "celeriac"


class Registry(Lifecycle):
    """A private registry, its address, CA and credentials."""

    def __init__(self, state_dir: Path, ca: KeyPair, *, start_timeout: float = 60.0) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.ca = ca
        self.start_timeout = start_timeout
        self.address = ""  # host:port, once started
        self.password = secrets.token_urlsafe(16)
        self.child: Child | None = None

    def start(self) -> None:
        binary = build.ensure_built(build.REGISTRY)["registry"]
        self.state_dir.mkdir(parents=True, exist_ok=True)
        network.ensure()
        self.address = f"{network.HOST_IP}:{free_port()}"
        serving = issue_cert(
            KeyPair(self.state_dir / "registry.crt", self.state_dir / "registry.key"),
            "celeriac-registry",
            issuer=self.ca,
            server=True,
            ip_addresses=[network.HOST_IP],
        )
        htpasswd = self.state_dir / "htpasswd"
        hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt()).decode()
        htpasswd.write_text(f"{USER}:{hashed}\n")
        htpasswd.chmod(0o600)
        config = self.state_dir / "config.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "version": 0.1,
                    "log": {"level": "info", "accesslog": {"disabled": True}},
                    "storage": {"filesystem": {"rootdirectory": str(self.state_dir / "data")}},
                    "http": {
                        "addr": self.address,
                        "tls": {"certificate": str(serving.cert), "key": str(serving.key)},
                    },
                    "auth": {"htpasswd": {"realm": "celeriac", "path": str(htpasswd)}},
                }
            )
        )
        self.child = Child(
            [str(binary), "serve", str(config)],
            log_path=self.state_dir / "registry.log",
            cwd=self.state_dir,
        )
        context = ssl.create_default_context(cafile=str(self.ca.cert))

        def answering() -> bool:
            assert self.child is not None
            self.child.check_alive()
            try:
                urllib.request.urlopen(f"https://{self.address}/v2/", timeout=2, context=context)
            except urllib.error.HTTPError as error:  # 401 without credentials: it is serving
                error.close()
                return error.code == 401
            except OSError:
                return False
            return False  # 200 without credentials would mean no authentication

        wait_until(answering, timeout=self.start_timeout, interval=0.2, message="the registry")

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None

    def reference(self, local: str) -> str:
        """Where ``push`` puts a local image: same path and tag, this registry's host."""
        path = local.split("/", 1)[1] if "." in local.split("/", 1)[0] else local
        return f"{self.address}/{path}"

    def push(self, local: str) -> str:
        """Push an image of the project's podman storage here; its reference in this registry."""
        remote = self.reference(local)
        certs = self.state_dir / "client-certs"
        certs.mkdir(exist_ok=True)
        (certs / "ca.crt").write_bytes(self.ca.cert.read_bytes())
        image_build.podman(
            "push",
            "--quiet",
            f"--cert-dir={certs}",
            f"--creds={USER}:{self.password}",
            local,
            f"docker://{remote}",
            capture=True,
        )
        return remote

    def docker_config(self) -> str:
        """A ``kubernetes.io/dockerconfigjson`` Secret's ``.dockerconfigjson`` for this registry."""
        auth = base64.b64encode(f"{USER}:{self.password}".encode()).decode()
        return json.dumps({"auths": {self.address: {"auth": auth}}})
