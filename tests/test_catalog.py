import json

import pytest
from typer.testing import CliRunner

from edgepool.catalog import get_device, list_devices
from edgepool.cli import app
from edgepool.device import Device
from edgepool.errors import SpecError

REQUIRED = ["jetson-agx-orin", "jetson-orin-nx", "jetson-orin-nano", "jetson-xavier-nx", "jetson-nano", "jetson-tx2",
            "rpi4", "rpi5", "phone-snapdragon-8-gen-3", "laptop-i7-1360p", "desktop-rtx4090"]


def test_catalog_covers_the_required_devices_with_sources():
    names = {d.name for d in list_devices()}
    assert set(REQUIRED) <= names
    for d in list_devices():
        assert {"peak_flops", "memory", "power"} <= set(d.sources), d.name
        assert d.peak("fp16") >= d.peak("fp32") and d.memory_bytes > 2**30


def test_jetson_entries_carry_vendor_power_modes():
    for name in ["jetson-agx-orin", "jetson-orin-nx", "jetson-orin-nano", "jetson-nano"]:
        d = get_device(name)
        assert len(d.power_modes) >= 2 and "power_modes" in d.sources
        budgets = [m.power_budget_w for m in d.power_modes]
        assert max(budgets) <= d.power_max_w


def test_unknown_device_and_bad_numbers_are_named():
    with pytest.raises(SpecError, match="jetson-agx-orin"):
        get_device("jetson-agx-oron")
    with pytest.raises(ValueError, match="precision"):
        Device(name="x", peak_flops={"fp64": 1e9}, memory_bytes=1, memory_bandwidth=1, cpu_cores=1)
    with pytest.raises(ValueError, match="power mode"):
        get_device("rpi5").mode("MAXN")


def test_devices_command_lists_at_least_eleven_with_sources():
    result = CliRunner().invoke(app, ["devices", "--json"])
    assert result.exit_code == 0, result.output
    devices = json.loads(result.output)
    assert len(devices) >= 11 and all(d["sources"] for d in devices)
