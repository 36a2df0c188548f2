"""The exporter's WSGI app and CLI errors, without a network: a fixed collector stands in."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from celeriac.cli import main
from celeriac.exporter.collector import GROUP_BACKLOG
from celeriac.exporter.server import create_server, create_wsgi_app


class FixedCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(GROUP_BACKLOG, "x", labels=["group"])
        family.add_metric(["default"], 7)
        yield family


def call(
    path: str, method: str = "GET", accept: str | None = None
) -> tuple[str, dict[str, str], bytes]:
    registry = CollectorRegistry()
    registry.register(FixedCollector())
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": method}
    if accept:
        environ["HTTP_ACCEPT"] = accept
    setup_testing_defaults(environ)
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        captured["status"], captured["headers"] = status, dict(headers)

    body = b"".join(create_wsgi_app(registry)(environ, start_response))
    return captured["status"], captured["headers"], body


def test_metrics_are_text_format_0_0_4_even_when_openmetrics_is_asked_for() -> None:
    status, headers, body = call("/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert status == "200 OK"
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert int(headers["Content-Length"]) == len(body)
    text = body.decode()
    assert "# EOF" not in text
    assert text.endswith("\n")
    assert f'{GROUP_BACKLOG}{{group="default"}} 7.0\n' in text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families[GROUP_BACKLOG].type == "gauge"


def test_healthz_index_head_and_errors() -> None:
    assert call("/healthz")[::2] == ("200 OK", b"ok\n")
    assert call("/")[0] == "200 OK"
    status, headers, body = call("/metrics", method="HEAD")
    assert (status, body) == ("200 OK", b"")
    assert int(headers["Content-Length"]) > 0
    assert call("/nope")[0] == "404 Not Found"
    status, headers, _ = call("/metrics", method="POST")
    assert (status, headers["Allow"]) == ("405 Method Not Allowed", "GET, HEAD")


def test_port_in_use_is_one_clear_error() -> None:
    registry = CollectorRegistry()
    first = create_server("127.0.0.1", 0, create_wsgi_app(registry))
    try:
        with pytest.raises(RuntimeError, match=r"cannot listen on 127.0.0.1:\d+: Address already"):
            create_server("127.0.0.1", first.server_port, create_wsgi_app(registry))
    finally:
        first.server_close()


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]) -> int:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as info:
        main(args)
    code = info.value.code
    assert isinstance(code, int)
    return code


def test_cli_bad_groups_file_exits_2_naming_group_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "groups.yaml"
    path.write_text("cpu:\n  queue: [cpu]\n")
    code = run_cli(["exporter"], monkeypatch, {"CELERIAC_WORKER_GROUPS_FILE": str(path)})
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        f"celeriac: configuration error: {path}: group 'cpu' has unknown field(s) queue; "
        "allowed: queues"
    ]


def test_cli_bad_port_option_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(["exporter", "--port", "123456"], monkeypatch, {})
    assert code == 2
    assert "CELERIAC_EXPORTER_PORT=123456 is not a TCP port" in capsys.readouterr().err


def test_cli_help_is_the_docstring(capsys: pytest.CaptureFixture[str]) -> None:
    main(["exporter", "--help"])
    out = capsys.readouterr().out
    assert "Serve Prometheus metrics read from Redis alone." in out
    assert "--worker-groups-file" in out
