"""The import-layer contract of pyproject.toml (``[tool.importlinter]``), run by pytest too.

DESIGN.md "Layers": imports point down only (bench > simulations > strategies > clients >
flwr_records > fl_ext), and nothing under fl_ext/ imports flwr. The first test runs
``lint-imports`` on the repository; the others run the same contracts on a tiny fake project
with one violation each, so a contract that silently checks nothing (a typo in a layer name, a
wrong order) fails here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def lint_imports() -> str:
    beside = Path(sys.executable).parent / "lint-imports"
    found = str(beside) if beside.exists() else shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports not installed: pip install -e '.[dev]'")
    return found


def importlinter_config() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as f:
        config: dict[str, Any] = tomllib.load(f)["tool"]["importlinter"]
    return config


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"unexpected config value {value!r}")


def write_config(path: Path, config: dict[str, Any]) -> None:
    lines = ["[tool.importlinter]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in config.items() if k != "contracts"]
    for contract in config["contracts"]:
        lines += ["", "[[tool.importlinter.contracts]]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in contract.items()]
    path.write_text("\n".join(lines) + "\n")


def run(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [lint_imports(), "--no-cache", "pyproject.toml"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_repository_keeps_the_import_contracts():
    result = run(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


# Allowed downward imports of the fake project: each layer imports the one below it.
CLEAN = {
    "bench/b.py": "import simulations.s\n",
    "simulations/s.py": "import strategies.st\nimport flwr.serverapp\n",
    "strategies/st.py": "import clients.c\nimport flwr_records\n",
    "clients/c.py": "import flwr_records\nimport fl_ext.engine\nimport flwr.client\n",
    "flwr_records/__init__.py": "import fl_ext.engine\nimport flwr.app\n",
    "fl_ext/engine.py": "import numpy\n",
}


def fake_project(tmp_path: Path, extra: dict[str, str]) -> Path:
    config = importlinter_config()
    for package in config["root_packages"]:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for name, source in {**CLEAN, **extra}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(path.read_text() + source if path.exists() else source)
    write_config(tmp_path / "pyproject.toml", config)
    return tmp_path


def test_fake_project_without_violation_passes(tmp_path):
    result = run(fake_project(tmp_path, {}))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("fl_ext/engine.py", "import flwr.app\n"),  # fl_ext is framework-free
        ("fl_ext/deep/__init__.py", "from flwr.common import ndarrays_to_parameters\n"),
        ("clients/c.py", "from strategies import st\n"),  # clients never import strategies
        ("flwr_records/__init__.py", "import clients.c\n"),
        ("fl_ext/engine.py", "import flwr_records\n"),
        ("strategies/st.py", "import simulations.s\n"),
    ],
)
def test_each_violation_is_caught(tmp_path, module, source):
    result = run(fake_project(tmp_path, {module: source}))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout, result.stdout
