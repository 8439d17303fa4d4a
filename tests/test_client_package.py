"""The client installs on its own (client/pyproject.toml, `tandem-client`): pycrdt and
websockets only, none of the server's dependencies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT

CHECK = """
import importlib.util, sys
import client.documents, client.sync, client.sync_client, shared.board, shared.protocol
assert client.sync.__file__.startswith(sys.prefix), client.sync.__file__
server_deps = ("starlette", "sqlalchemy", "uvicorn", "pydantic", "alembic", "server")
present = [name for name in server_deps if importlib.util.find_spec(name) is not None]
assert not present, present
print("ok")
"""


def test_the_client_installs_and_imports_without_the_server_dependencies(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            str(ROOT / "client"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    # The package index (PyPI) must be reachable: installing from it is what this checks.
    assert install.returncode == 0, install.stderr
    # Outside the repository, so that nothing is imported from the work tree.
    check = subprocess.run(
        [str(python), "-c", CHECK], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "ok"
