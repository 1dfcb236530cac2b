"""What README.md tells a reader to run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_readme_test_command_prints_a_summary_line():
    import tomllib

    readme = (REPO / "README.md").read_text()
    (cmd,) = re.findall(r"^    \$ (.*pytest.*)$", readme, flags=re.M)[:1]  # what .ci/run runs
    pytest_args = shlex.split(cmd)
    addopts = shlex.split(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
                          .get("addopts", ""))
    quiet = sum(a.count("q") for a in pytest_args + addopts if re.fullmatch(r"-q+", a))
    assert quiet == 1, (cmd, addopts)  # -qq would drop the "N passed" line from the CI log
