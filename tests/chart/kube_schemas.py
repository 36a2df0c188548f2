"""Kubernetes' own JSON schemas (from kubernetes-validate), strict: unknown fields are errors.

Mirrors `kubernetes_validate.validate(obj, version, strict=True)` but builds each validator once
per (version, kind, apiVersion): the library re-reads and re-parses the schema files on every
call, which is most of its cost.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jsonschema
import referencing
from kubernetes_validate import utils

# Every minor version the chart supports (Chart.yaml kubeVersion >=1.29).
VERSIONS = tuple(f"1.{minor}" for minor in range(29, 38))


class SchemaMissing(Exception):
    """kubernetes-validate has no schema for this kind: not a built-in Kubernetes kind."""


def _full_version(minor: str) -> str:
    matches = [v for v in utils.all_versions() if utils.major_minor(v) == minor]
    if not matches:
        raise utils.VersionNotSupportedError(minor)
    return matches[-1]


@functools.cache
def _validator(minor: str, kind: str, api_version: str) -> jsonschema.Draft202012Validator:
    schema_dir = f"kubernetes-json-schema/v{_full_version(minor)}-local-strict"
    # rbac.authorization.k8s.io/v1 -> rbac-v1, as kubernetes-validate names its files.
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = utils.schema_contents(f"{schema_dir}/{kind.lower()}-{group_version}.json", minor)
    except FileNotFoundError:
        raise SchemaMissing(f"no Kubernetes {minor} schema for {api_version} {kind}") from None
    definitions = utils.schema_contents(f"{schema_dir}/_definitions.json", minor)
    registry: referencing.Registry[Any] = referencing.Registry()
    registry = referencing.Resource.from_contents(schema) @ registry
    registry = referencing.Resource.from_contents(definitions) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


def errors(obj: dict[str, Any], minor: str) -> list[str]:
    """Validation errors of `obj` against Kubernetes `minor` ("1.29"), each naming its path."""
    validator = _validator(minor, obj["kind"], obj["apiVersion"])
    found = []
    for error in validator.iter_errors(obj):
        path = ".".join(str(part) for part in error.absolute_path) or "(root)"
        found.append(f"{path}: {error.message}")
    return found
