"""Following a doc's steps in a fresh project: its shell commands and its file blocks.

docs/quickstart.md and the "Scale out your own project" section of docs/deploy.md are
written for a reader to follow literally; tests/test_quickstart.py and
tests/test_quickstart_deploy.py follow them in ``tmp_path`` with this module, so both
read the blocks the same way:

- a ```` ```sh ```` block holds commands, one a line;
- a ```` ```python ```` block whose first line is ``# file: PATH (replace)`` or
  ``# file: PATH (append)`` replaces that file of the reader's project, or is appended to
  it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.servers import ROOT

FILE_BLOCK = re.compile(r"```python[^\n]*\n# file: (\S+) \((replace|append)\)\n(.*?)```", re.S)
SHELL_BLOCK = re.compile(r"```sh\n(.*?)```", re.S)
QUICKSTART = ROOT / "docs" / "quickstart.md"


def shell_blocks(text: str) -> list[list[str]]:
    """The commands of each ```sh block, one list per block."""
    return [block.strip().splitlines() for block in SHELL_BLOCK.findall(text)]


def file_blocks(text: str) -> list[tuple[str, str, str]]:
    """(path, "replace" or "append", body) of each file block, in order."""
    return FILE_BLOCK.findall(text)


def project_env() -> dict[str, str]:
    """The environment of a reader's shell: this virtualenv first on PATH, the package
    under test (this checkout) importable as ``pip install`` would leave it, and no
    settings module of this repository's."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")
    }
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT)
    return env


def run(command: str, cwd: Path, env: dict[str, str]) -> None:
    """Run one documented command; ``python`` is this interpreter."""
    if command.startswith("python "):
        command = f"{sys.executable} {command[len('python ') :]}"
    done = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{command}\n{done.stdout}{done.stderr}"


def apply_file_blocks(text: str, project: Path) -> None:
    """Write the doc's file blocks into ``project``: each edits a file that exists."""
    for path, mode, body in file_blocks(text):
        target = project / path
        assert target.exists(), f"the doc edits {path}, which the earlier steps did not make"
        if mode == "replace":
            target.write_text(body)
        else:
            target.write_text(target.read_text() + "\n" + body)


def follow_quickstart(directory: Path, env: dict[str, str]) -> Path:
    """Follow docs/quickstart.md in ``directory`` up to "Run it": make the project and
    apply its edits. Returns the project's directory (where ``manage.py`` is).

    ``pip install`` is skipped: this environment has the package installed already, as
    the step leaves it."""
    text = QUICKSTART.read_text()
    setup = shell_blocks(text)[0]
    assert setup[0].startswith("pip install django-async-actions")
    cwd = directory
    for command in setup[1:]:
        if command.startswith("cd "):
            cwd = cwd / command[3:].strip()
            continue
        run(command, cwd, env)
    apply_file_blocks(text, cwd)
    return cwd


#: The processing page's static files, with a piece of each one's content.
STATIC = {
    "async_actions/progress.js": "customElements",
    "async_actions/progress.css": ".aa-progress",
}


def assert_static_served(base: str) -> None:
    """The processing page's script and stylesheet answer 200 with their content."""
    for name, marker in STATIC.items():
        with urllib.request.urlopen(f"{base}/static/{name}", timeout=10) as response:
            assert response.status == 200, name
            assert marker in response.read().decode(), name
