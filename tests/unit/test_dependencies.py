"""The lock (constraints.txt) stays within pyproject's ranges, and CI runs the README's test command."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def locked_versions() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            name, version = entry.split("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def declared_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + [line for extra in project["optional-dependencies"].values() for line in extra]
    return [Requirement(line) for line in listed]


def test_every_declared_dependency_is_locked_within_its_range():
    pins = locked_versions()
    for requirement in declared_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in constraints.txt: run scripts/lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {requirement.specifier}: run scripts/lock"
        )


def test_the_lock_pins_every_entry_exactly():
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        entry = line.split("#", 1)[0].strip()
        assert not entry or re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!-]+", entry), entry


def readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    return next(block for block in blocks if "pytest" in block)


def test_ci_runs_the_readme_test_command_in_a_fresh_environment():
    ci = (ROOT / ".ci" / "run").read_text()
    command = readme_test_command()
    assert "-c constraints.txt" in command
    assert command in ci.splitlines()
    creates_venv = ci.index("python3 -m venv")
    assert ci.index(". \"$fresh/venv/bin/activate\"") > creates_venv
    assert ci.index(command) > creates_venv
