"""Which isolated runtimes this host can run a measurement in, and the command prefix for each.

- "container": a real container runtime (docker or podman) with a reachable daemon and a local image named by
  $EDGEPOOL_CONTAINER_IMAGE whose libraries can run this Python environment, bind-mounted at the same paths
  with the source and data. Checked quickly; when it is missing the container axis is skipped with the reason.
  (No daemon where this was written, so the container run itself has not been exercised.)
- "namespaces": `unshare --mount --pid --fork --mount-proc --uts --ipc` as root. An approximation of a
  container's kernel isolation only: same root file system, same Python, no image, no overlay file system,
  no seccomp.
  It is labelled "namespaces only (unshare), not a container image" wherever it appears, never as Docker.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# --mount-proc: a /proc of the new pid namespace, so the child reads its own (not the host init's) CPU times
UNSHARE = ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--uts", "--ipc"]
IMAGE_ENV = "EDGEPOOL_CONTAINER_IMAGE"
NAMESPACES_LABEL_NOTE = ("runtime: namespaces only (unshare --mount --pid --fork --mount-proc --uts --ipc), not a "
                         "container "
                         "image: same root file system and Python as bare metal")


def namespaces_unavailable() -> str | None:
    """Why an unshare run cannot happen here, or None (tries `unshare ... true` once)."""
    if os.geteuid() != 0:
        return f"unshare of mount/pid/uts/ipc namespaces needs root (uid {os.geteuid()})"
    if shutil.which("unshare") is None:
        return "`unshare` (util-linux) is not installed"
    try:
        proc = subprocess.run(UNSHARE + ["true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`unshare` failed: {exc}"
    if proc.returncode != 0:
        return f"`unshare` failed here: {proc.stderr.strip()[:160]}"
    return None


def container_engine() -> tuple[str | None, str | None]:
    """(engine, None) when docker or podman can run our image, else (None, the reason)."""
    reasons = []
    for engine in ("docker", "podman"):
        if shutil.which(engine) is None:
            reasons.append(f"no `{engine}` client")
            continue
        try:
            proc = subprocess.run([engine, "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                                  text=True, timeout=8)
        except (OSError, subprocess.TimeoutExpired):
            reasons.append(f"`{engine} info` did not answer within 8 s")
            continue
        if proc.returncode != 0:
            said = (proc.stderr.strip().splitlines() or ["no message"])[-1].split(". ")[0]
            reasons.append(f"{engine}: no reachable daemon ({said})")
            continue
        image = os.environ.get(IMAGE_ENV)
        if not image:
            reasons.append(f"{engine} daemon reachable but ${IMAGE_ENV} names no local image with this Python")
            continue
        found = subprocess.run([engine, "image", "inspect", image], capture_output=True, timeout=15)
        if found.returncode != 0:
            reasons.append(f"{engine}: image {image!r} is not present locally (nothing is pulled)")
            continue
        return engine, None
    return None, "; ".join(reasons)


def container_prefix(engine: str, mounts: list[Path]) -> list[str]:
    """`ENGINE run` with this Python environment, the source tree and the data folders bind-mounted at the
    same paths, no network, host-sized /dev/shm for the loader workers."""
    prefix = Path(sys.prefix).resolve()
    argv = [engine, "run", "--rm", "--network", "none", "--ipc", "private", "--shm-size", "2g",
            "-e", f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}"]
    for path in {prefix, Path(sys.base_prefix).resolve(), *(Path(m).resolve() for m in mounts)}:
        argv += ["-v", f"{path}:{path}"]
    return argv + [os.environ[IMAGE_ENV]]
