"""Dependencies whose private parts soundry relies on are pinned to the range their tests ran on."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _requirement(name: str) -> Requirement:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return next(r for r in map(Requirement, deps) if r.name == name)


def test_uvicorn_is_pinned_to_the_tested_minor_release():
    """``server.with_header_timeout`` subclasses uvicorn's HTTP protocols and reads their private state
    (``cycle``, ``more_body``, ``pipeline``, ``on_response_complete``): a new uvicorn minor release may change
    them, so the pin admits only the minor release the slow-client tests ran on."""
    spec = _requirement("uvicorn").specifier
    installed = Version(version("uvicorn"))
    assert installed in spec
    upper = [s for s in spec if s.operator in ("<", "<=", "==", "~=")]
    assert upper, f"uvicorn is unpinned ({spec or 'any version'})"
    assert Version(f"{installed.major}.{installed.minor + 1}") not in spec
