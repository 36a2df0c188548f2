"""Fixtures of the chart tests: the matrix is rendered once per session."""

from __future__ import annotations

import pytest

from tests.chart.matrix import MATRIX
from tests.chart.render import Rendered, render


@pytest.fixture(scope="session")
def renders() -> dict[str, Rendered]:
    """Every matrix entry, rendered once: name -> objects."""
    return {name: render(values) for name, values in MATRIX.items()}


@pytest.fixture(scope="session")
def defaults(renders: dict[str, Rendered]) -> Rendered:
    return renders["defaults"]
