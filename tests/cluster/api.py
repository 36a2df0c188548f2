"""Raw JSON requests to the API server through the `kubernetes` client's ApiClient (its
kubeconfig loading, TLS and auth), so objects stay exactly as the server sends them."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from typing import Any

from kubernetes import config as kube_config

from tests.cluster.podspec import Obj

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Api:
    def __init__(self, kubeconfig: str) -> None:
        self.client = kube_config.new_client_from_config(config_file=kubeconfig)
        self.server: str = self.client.configuration.host  # https://10.231.0.1:6443

    def _send(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> Any:
        _, url, headers, payload, _ = self.client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        return self.client.call_api(method, url, headers, payload, _request_timeout=timeout)

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Obj:
        response = self._send(method, path, body, **kwargs)
        data = response.read()
        if not 200 <= response.status < 300:
            raise ApiError(response.status, data.decode(errors="replace"))
        result: Obj = json.loads(data) if data else {}
        return result

    def get(self, path: str) -> Obj | None:
        try:
            return self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def watch(self, path: str, query: dict[str, Any], timeout: int) -> Iterator[Obj]:
        """Watch events (dicts with type and object) until the server ends the watch."""
        query = {**query, "watch": "true", "timeoutSeconds": timeout, "allowWatchBookmarks": "true"}
        response = self._send("GET", path, query=query, timeout=timeout + 10)
        if response.status != 200:
            raise ApiError(response.status, response.read().decode(errors="replace"))
        buffer = b""
        try:
            for chunk in response.response.stream(65536, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            response.response.release_conn()
