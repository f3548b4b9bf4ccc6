"""environment.yml (for conda users) lists the same packages as pyproject.toml."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NOT_PYTHON = {"python", "pip", "openjdk"}  # conda-only: the interpreter, pip, java for METEOR


def _name(requirement):
    return re.split(r"[<>=!~ ;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_lists_the_runtime_metrics_and_workflow_packages():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            listed |= {_name(d) for d in dep["pip"] if not d.startswith("-e")}
            assert "-e ." in dep["pip"]  # capmodel itself
        else:
            listed.add(_name(dep))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in ("metrics", "workflow"):
        wanted |= {_name(r) for r in project["optional-dependencies"][extra]}
    wanted -= {"snakefmt"}  # a formatting check of the tests, not needed to run the workflow
    assert wanted <= listed, f"missing from environment.yml: {sorted(wanted - listed)}"
    assert listed - NOT_PYTHON <= wanted, f"not in pyproject.toml: {sorted(listed - NOT_PYTHON - wanted)}"
