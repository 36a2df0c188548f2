"""Bad values are refused with a message that names the key (and, for rules across keys, the
fix). Each file in bad-values/ is one values file; its first line says what Helm must answer:
`# expect: <text that must appear in Helm's message>`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.chart.render import RenderError, render

pytestmark = pytest.mark.chart

BAD_VALUES = sorted((Path(__file__).parent / "bad-values").glob("*.yaml"))
EXPECT = "# expect: "


def test_there_are_bad_values_files() -> None:
    assert len(BAD_VALUES) >= 30


@pytest.mark.parametrize("path", BAD_VALUES, ids=[path.stem for path in BAD_VALUES])
def test_bad_values_are_refused_naming_the_key(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    first_line = text.splitlines()[0]
    assert first_line.startswith(EXPECT), f"{path.name} must start with {EXPECT!r}"
    expected = first_line.removeprefix(EXPECT)
    with pytest.raises(RenderError) as refused:
        render(yaml.safe_load(text))
    assert expected in str(refused.value)
