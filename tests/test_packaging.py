"""pyproject.toml and environment.yml list the same packages; the README's commands exist."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names that differ from PyPI names
CONDA_TO_PYPI = {"pytorch": "torch"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pyproject_packages() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return {_name(r) for r in reqs}


def conda_packages() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    names = set()
    for dep in env["dependencies"]:
        if isinstance(dep, str):
            name = _name(dep.split("=")[0] if "=" in dep and not re.search("[<>]", dep) else dep)
            names.add(CONDA_TO_PYPI.get(name, name))
        else:  # the pip section: PyPI names, besides the package itself (-e .)
            names |= {_name(r) for r in dep["pip"] if not r.startswith("-")}
    return names - {"python", "pip"}


def test_environment_and_pyproject_agree():
    py, conda = pyproject_packages(), conda_packages()
    assert py - conda == set(), f"in pyproject.toml only: {sorted(py - conda)}"
    assert conda - py == set(), f"in environment.yml only: {sorted(conda - py)}"


def test_environment_installs_the_package_and_python_311():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pips = [d for d in env["dependencies"] if isinstance(d, dict)]
    assert pips and "-e ." in pips[0]["pip"]


def test_dependencies_are_ranges_not_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"]:
        assert "==" not in req, f"exact pin in pyproject dependencies: {req}"


def test_readme_quickstart_has_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quickstart", 1)[1].split("```", 2)[1]
    commands = [line for line in block.splitlines()[1:] if line.strip() and not line.startswith("#")]
    assert len(commands) == 2, commands
    assert "jkt-lab demo" in commands[0]
    assert "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pytest" in ci
