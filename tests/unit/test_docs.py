"""Documentation stays true: every setting the code reads is documented for users."""

from __future__ import annotations

import re

from tests.support import CELERIAC_VARIABLE, REPO_ROOT, variables_in_code


def _documentation() -> str:
    readmes = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "services").glob("*/README.md"))]
    return "\n".join(path.read_text(encoding="utf-8") for path in readmes)


def test_the_scan_finds_the_shared_settings() -> None:
    # Guards the scan itself: if it found nothing, the next test could not fail.
    found = variables_in_code()
    assert {"CELERIAC_BROKER_URL", "CELERIAC_VISIBILITY_TIMEOUT_SECONDS"} <= found
    assert "CELERIAC_WORKER_CPU_LIMIT" in found


def test_every_environment_variable_is_documented() -> None:
    docs = _documentation()
    # celeriac up documents its CELERIAC_UP_* options in `celeriac up --help`.
    documented = set(CELERIAC_VARIABLE.findall(docs))
    undocumented = sorted(
        name for name in variables_in_code() - documented if not name.startswith("CELERIAC_UP_")
    )
    assert not undocumented, f"document these in README.md or services/*/README.md: {undocumented}"


def test_readme_quickstart_is_two_commands_that_exist_in_the_makefile() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    quickstart = readme.split("## Quickstart", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in quickstart.strip().splitlines()]
    assert commands == ["make up", "make test"]
    assert re.search(r"^up:", makefile, re.MULTILINE)
    assert re.search(r"^test:", makefile, re.MULTILINE)


def test_readme_lists_every_demo_task_with_its_parameters() -> None:
    """README's demo table is a copy of the demo app's tasks and signatures: compared here."""
    import inspect

    from celeriac import demo

    readme = (REPO_ROOT / "README.md").read_text()
    table = readme[readme.index("### Demo tasks") : readme.index("### Dependencies")]
    rows = dict(re.findall(r"^\| `(celeriac\.demo\.\w+)` \| ([^|]+) \|", table, re.MULTILINE))
    tasks = {name: task for name, task in demo.app.tasks.items() if name.startswith("celeriac.")}
    assert rows.keys() == tasks.keys()
    for name, task in tasks.items():
        parameters = inspect.signature(task.run, eval_str=True).parameters.values()
        takes = f"`{', '.join(map(str, parameters))}`" if parameters else "none"
        assert rows[name].strip() == takes, f"{name}: README says {rows[name]}, it takes {takes}"


def test_readme_layout_names_every_module_and_folder() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") : readme.index("## Your own tasks")]
    package = REPO_ROOT / "src" / "celeriac"
    names = [p.name for p in package.glob("*.py") if not p.name.startswith("__")]
    names += [f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").exists()]
    names += [f"tests/{p.name}/" for p in (REPO_ROOT / "tests").iterdir() if p.is_dir()]
    names += [f"{p.name}/" for p in REPO_ROOT.iterdir() if p.is_dir() and p.name[0] not in "._"]
    missing = [n for n in names if f"`{n}" not in layout and f"/{n}`" not in layout]
    assert not [m for m in missing if "__pycache__" not in m and "egg-info" not in m], missing
