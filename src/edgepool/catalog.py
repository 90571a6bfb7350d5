"""The built-in device catalog (`catalog/devices.yaml`), each number with its public source."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import yaml

from edgepool.device import Device
from edgepool.errors import SpecError


@lru_cache(maxsize=1)
def _catalog() -> dict[str, Device]:
    text = resources.files("edgepool").joinpath("catalog/devices.yaml").read_text()
    raw = yaml.safe_load(text)
    return {name: Device(name=name, **spec) for name, spec in raw.items()}


def list_devices() -> list[Device]:
    return list(_catalog().values())


def device_names() -> list[str]:
    return list(_catalog())


def get_device(name: str) -> Device:
    """A copy of a catalog entry, safe to modify."""
    try:
        return _catalog()[name].model_copy(deep=True)
    except KeyError:
        raise SpecError(field="device", value=name, accepted=", ".join(device_names())) from None
