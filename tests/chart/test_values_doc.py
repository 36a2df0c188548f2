"""One source of documentation per value: the `## @param` comments of values.yaml generate the
README table, and values.schema.json covers every value with unknown keys rejected."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import yaml

from tests.chart import values_doc
from tests.chart.render import CHART_DIR

pytestmark = pytest.mark.chart

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text(encoding="utf-8"))
VALUES_TEXT = values_doc.VALUES.read_text(encoding="utf-8")


def test_every_value_has_a_param_and_every_param_a_value() -> None:
    assert values_doc.problems(VALUES_TEXT) == []


def test_the_readme_table_is_current() -> None:
    readme = values_doc.README.read_text(encoding="utf-8")
    assert values_doc.readme_with_table(readme, VALUES_TEXT) == readme, (
        "run python -m tests.chart.values_doc"
    )


def test_a_value_without_param_and_a_stale_param_are_reported() -> None:
    text = VALUES_TEXT.replace("## @param logLevel ", "## @param logLevl ")
    assert values_doc.problems(text) == [
        "logLevel: value has no ## @param comment",
        "logLevl: @param names no value in values.yaml",
    ]


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema or "allOf" in schema:
        if "$ref" in schema:
            schema = SCHEMA["definitions"][schema["$ref"].rsplit("/", 1)[1]]
        else:
            schema = schema["allOf"][0]
    return schema


def schema_at(key: str) -> dict[str, Any] | None:
    node = SCHEMA
    for part in key.split("."):
        node = resolve(node)
        if part in node.get("properties", {}):
            node = node["properties"][part]
        elif node.get("patternProperties"):
            node = next(iter(node["patternProperties"].values()))
        else:
            return None
    return resolve(node)


def test_the_schema_is_valid_and_accepts_the_defaults() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.validate(yaml.safe_load(VALUES_TEXT), SCHEMA)


def test_every_documented_value_is_in_the_schema() -> None:
    missing = [p.key for p in values_doc.params(VALUES_TEXT) if schema_at(p.key) is None]
    assert missing == []


def closed(node: Any, path: str = "") -> list[str]:
    """Object schemas that list properties but accept unknown ones."""
    found = []
    if isinstance(node, dict):
        if "properties" in node and node.get("additionalProperties") is not False:
            found.append(path or "(root)")
        for key, child in node.items():
            found += closed(child, f"{path}/{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += closed(child, f"{path}/{index}")
    return found


def test_every_object_in_the_schema_rejects_unknown_keys() -> None:
    # envList items name a required key but are Kubernetes EnvVar objects: loose on purpose.
    assert closed(SCHEMA) == ["/definitions/envList/items"]
