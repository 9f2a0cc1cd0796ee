"""The test matrix: ``nox`` runs the suite on every Python the package supports.

    .venv/bin/nox -l                                  # the sessions
    .venv/bin/nox -s tests-3.12 -- -m "not claude_code"  # one Python, pytest options after --

Each session installs the package with its test extra into its own venv under ``.nox/`` (Django 6
on Python 3.12 and newer, Django 5.2 on 3.11). The interpreters are found on ``PATH`` as
``python3.X``; ``.ci/run`` puts pyenv's there.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = True

PYTHONS = ["3.11", "3.12", "3.13"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    session.install("--quiet", "-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)
