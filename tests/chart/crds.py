"""KEDA's CRDs as JSON schemas that reject unknown fields.

The CRDs are not copied into this repository: they are read from CELERIAC_KEDA_CRDS_DIR
(default: <repo>/../shared/keda-crds). An object is validated against
`spec.versions[].schema.openAPIV3Schema` of its version; every object schema that lists
`properties` without `additionalProperties` gets `additionalProperties: false` (what the API
server's pruning does to unknown fields, turned into an error), except where the CRD sets
`x-kubernetes-preserve-unknown-fields`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.chart.render import REPO_ROOT

Schema = dict[str, Any]


def crds_dir() -> Path:
    configured = os.environ.get("CELERIAC_KEDA_CRDS_DIR")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "keda-crds"


def strict(schema: Schema) -> Schema:
    """A copy of an OpenAPI v3 schema in which unknown fields are errors."""
    schema = copy.deepcopy(schema)
    _close(schema)
    return schema


def _close(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _close(item)
        return
    if not isinstance(node, dict):
        return
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    for key in ("properties", "patternProperties"):
        for child in node.get(key, {}).values():
            _close(child)
    for key in ("items", "additionalProperties", "not"):
        _close(node.get(key))
    for key in ("allOf", "anyOf", "oneOf"):
        _close(node.get(key, []))


def validators(directory: Path) -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    """(apiVersion, kind) -> a strict validator, for every CRD version in `directory`."""
    found = {}
    for path in sorted(directory.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = strict(version["schema"]["openAPIV3Schema"])
                found[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return found


def errors(validator: jsonschema.Draft7Validator, obj: dict[str, Any]) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in validator.iter_errors(obj)
    ]
