"""The test matrix: Python x Django x database. ``nox`` runs every session.

CI legs: Python 3.11 + Django 5.2 and Python 3.13 + Django 6.1, each on SQLite and on
PostgreSQL. PostgreSQL sessions skip when the server is missing, unless
AA_REQUIRE_SERVICES=1 (CI) makes that an error.
"""

from __future__ import annotations

import glob
import os
import socket

import nox

nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "tests", "package"]
# CI must run both legs; elsewhere a missing interpreter skips its session with a reason.
nox.options.error_on_missing_interpreters = os.environ.get("AA_REQUIRE_SERVICES") == "1"

# pyenv installs (as on these machines) are found even when pyenv shims do not expose them.
for _bin in sorted(glob.glob("/root/.pyenv/versions/3.1[1-9]*/bin"), reverse=True):
    if _bin not in os.environ.get("PATH", ""):
        os.environ["PATH"] = f"{_bin}{os.pathsep}{os.environ.get('PATH', '')}"

LEGS = [
    ("3.11", "django>=5.2,<5.3"),
    ("3.13", "django>=6.1,<6.2"),
]


def _postgres_up() -> bool:
    try:
        with socket.create_connection((os.environ.get("AA_PG_HOST", "127.0.0.1"), 5432), 1):
            return True
    except OSError:
        return False


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """Ruff, the import-linter layers contract and ``mypy --strict`` on the package.

    mypy's Django plugin imports the settings module, so the package and Django are
    installed (the oldest tested Django, which the stubs match).
    """
    session.install("-e", ".[dev]", "django>=5.2,<5.3")
    session.run("ruff", "check", ".")
    _typecheck(session)


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """``mypy --strict`` and the import-linter layers contract alone (also run by ``lint``)."""
    session.install("-e", ".[dev]", "django>=5.2,<5.3")
    _typecheck(session)


def _typecheck(session: nox.Session) -> None:
    session.run("lint-imports")
    session.run("mypy", env={"PYTHONPATH": os.getcwd()})


@nox.session
@nox.parametrize(
    "python,django",
    [nox.param(py, dj, id=f"py{py}-{dj.split('>=')[1].split(',')[0]}") for py, dj in LEGS],
)
@nox.parametrize("db", ["sqlite", "postgres"])
def tests(session: nox.Session, django: str, db: str) -> None:
    if db == "postgres" and not _postgres_up():
        if os.environ.get("AA_REQUIRE_SERVICES") == "1":
            session.error("PostgreSQL is not reachable on 127.0.0.1:5432")
        session.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    session.install("-e", ".[dev]", django)
    args = list(session.posargs)
    if db == "postgres":
        # Browser and multi-process tests run once per leg, in the SQLite session.
        args = ["-m", "not browser", *args]
    session.run("pytest", *args, env={"AA_TEST_DB": db})


@nox.session(python="3.11")
def package(session: nox.Session) -> None:
    """Build sdist and wheel, check them, and run the suite against the installed wheel."""
    import pathlib
    import shutil
    import tempfile
    import zipfile

    session.install("build", "twine")
    dist = pathlib.Path(tempfile.mkdtemp(prefix="aa-dist-"))
    session.run("python", "-m", "build", "--outdir", str(dist))
    session.run("twine", "check", "--strict", *map(str, dist.iterdir()))
    wheel = next(dist.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "async_actions/py.typed",
        "async_actions/migrations/0001_initial.py",
        "async_actions/static/async_actions/",
        "async_actions/templates/async_actions/",
        "async_actions/locale/ru/LC_MESSAGES/django.mo",
        "async_actions/locale/de/LC_MESSAGES/django.mo",
    ):
        if not any(name.startswith(needed) for name in names):
            session.error(f"{needed} is missing from {wheel.name}")
    session.install(f"{wheel}[dev]")
    # A reused venv already has this version: replace it with the wheel just built.
    session.install("--force-reinstall", "--no-deps", str(wheel))
    # Run the tests from a copy without the source package, so the wheel is what imports.
    work = pathlib.Path(tempfile.mkdtemp(prefix="aa-wheel-tests-"))
    for item in ("tests", "example_project", "docs", "README.md", "manage.py", "pyproject.toml"):
        source = pathlib.Path(item)
        if source.is_dir():
            shutil.copytree(source, work / item)
        else:
            shutil.copy(source, work / item)
    session.chdir(work)
    session.run(
        "python",
        "-c",
        "import async_actions, sys; assert 'site-packages' in async_actions.__file__",
    )
    session.run("pytest", "-m", "not browser and not slow", *session.posargs)
