"""Every data file the packages read at run time is declared as package data (an editable
install hides a missing declaration; the Docker images use a normal install)."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_SUFFIXES = {".yaml", ".yml", ".md", ".html", ".mako", ".txt", ".json", ".jinja"}


def test_data_files_are_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_data: dict[str, list[str]] = config["tool"]["setuptools"]["package-data"]
    tracked = subprocess.run(["git", "ls-files", "agent", "tools", "evals", "prompts"], cwd=ROOT,
                             check=True, capture_output=True, text=True).stdout.split()
    missing = []
    for name in tracked:
        path = Path(name)
        if path.suffix not in DATA_SUFFIXES or path.parts[-2:] == ("configs", path.name):
            continue  # evals/configs/ holds example configs for users, not run-time data
        covered = False
        for package, patterns in package_data.items():
            folder = Path(*package.split("."))
            if folder in path.parents:
                relative = path.relative_to(folder).as_posix()
                covered |= any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(relative, p.replace("**/", ""))
                               for p in patterns)
        if not covered:
            missing.append(name)
    assert not missing, f"not declared in [tool.setuptools.package-data]: {missing}"


def test_dependency_directions_hold() -> None:
    """The import-linter contracts of pyproject.toml (tools -> agent -> evals; evals outside
    the CLI never imports it; production code never imports the tests)."""
    linter = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(linter)], cwd=ROOT, check=False, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
