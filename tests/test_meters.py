"""Energy meters: each parser against recorded real outputs (tests/data/meters, origins in SOURCES.md), RAPL
wrap-around, trapezoid integration on a fake clock, detection on an empty host, and the run metrics that say
energy is modelled when no meter exists (this VM has none)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from edgepool.meters import (NO_METER, JetsonMeter, Meter, MeterSession, NvmlMeter, PowerIntegrator, PowerSampler,
                             RaplMeter, detect_meter, energy_metrics, find_meters, host_energy, measure,
                             module_total, parse_tegrastats, rapl_zones, wrapped_delta)
from edgepool.meters.base import Measurement
from edgepool.meters.detect import MeterSearch

DATA = Path(__file__).parent / "data" / "meters"
RANGE_J = 262143328850 / 1e6


def lines(name: str) -> list[str]:
    return (DATA / "tegrastats" / name).read_text().splitlines()


class FakeClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


# ------------------------------------------------------------------------------------------------ RAPL
def copy_tree(name: str, dest: Path) -> Path:
    """A writable copy of a recorded sysfs tree (a test swaps snapshots in place, as the kernel would)."""
    shutil.copytree(DATA / "rapl" / name, dest, dirs_exist_ok=True)
    return dest


def test_rapl_zones_read_the_recorded_tree():
    zones = rapl_zones(DATA / "rapl" / "recorded")
    assert [z.domain for z in zones] == ["package-0", "package-0/core", "package-0/uncore"]
    assert [z.parent for z in zones] == [None, "package-0", "package-0"]
    assert all(z.max_energy_j == pytest.approx(262143.32885) for z in zones)
    meter = RaplMeter(DATA / "rapl" / "recorded")
    assert meter.read() == pytest.approx({"package-0": 26963.529117, "package-0/core": 7980.278886,
                                          "package-0/uncore": 6564.982278})
    # core and uncore are inside the package: the total is the package alone
    assert meter.total(meter.read()) == pytest.approx(26963.529117)


def test_rapl_difference_between_snapshots(tmp_path):
    root = copy_tree("recorded", tmp_path / "powercap")
    clock = FakeClock(100.0)
    meter = RaplMeter(root)
    session = MeterSession(meter, poll_s=None, clock=clock).start()
    copy_tree("later", root)
    clock.t = 110.0
    result = session.stop()
    assert result.meter == "rapl" and result.seconds == 10.0
    assert result.joules == pytest.approx({"package-0": 1234.5, "package-0/core": 700.25,
                                           "package-0/uncore": 100.125})
    assert result.total_j == pytest.approx(1234.5) and result.mean_power_w == pytest.approx(123.45)
    assert result.wraps == {}


def test_rapl_counter_wrap_is_added_back(tmp_path):
    root = copy_tree("recorded", tmp_path / "powercap")
    session = MeterSession(RaplMeter(root), poll_s=None, clock=FakeClock()).start()
    copy_tree("wrapped", root)
    result = session.stop()
    # package: 20200267 uJ after wrapping at 262143328850 uJ, from 26963529117 uJ
    assert result.joules["package-0"] == pytest.approx(20.200267 + RANGE_J - 26963.529117)
    assert result.joules["package-0"] == pytest.approx(235200.0)
    assert result.joules["package-0/core"] == pytest.approx(150000.0)
    assert result.wraps == {"package-0": 1}


def test_wrapped_delta_without_a_range_is_a_plain_difference():
    assert wrapped_delta(10.0, 4.0, None) == (-6.0, 0)
    assert wrapped_delta(10.0, 4.0, 100.0) == (94.0, 1)
    assert wrapped_delta(4.0, 10.0, 100.0) == (6.0, 0)


def test_rapl_without_zones_or_permission_is_no_meter(tmp_path):
    with pytest.raises(FileNotFoundError):
        RaplMeter(tmp_path)
    root = copy_tree("recorded", tmp_path / "powercap")
    (root / "intel-rapl:0" / "energy_uj").unlink()  # as good as a counter only root may read
    with pytest.raises(OSError):
        RaplMeter(root)


# ------------------------------------------------------------------------------------------------ tegrastats
def test_tegrastats_nano_input_rail_without_units():
    power = parse_tegrastats(lines("nano.txt")[0])
    assert power.instant_mw == {"POM_5V_IN": 4520.0, "POM_5V_GPU": 0.0, "POM_5V_CPU": 1078.0}
    assert power.average_mw == {"POM_5V_IN": 4680.0, "POM_5V_GPU": 0.0, "POM_5V_CPU": 1205.0}
    assert module_total(power.watts()) == pytest.approx(4.52)  # the input rail, not 4.52 + 1.078


def test_tegrastats_tx2_both_recorded_formats():
    first, second = (parse_tegrastats(line) for line in lines("tx2.txt"))
    assert first.instant_mw == {"VDD_SYS_GPU": 153.0, "VDD_SYS_SOC": 536.0, "VDD_4V0_WIFI": 633.0,
                                "VDD_IN": 3140.0, "VDD_SYS_CPU": 536.0, "VDD_SYS_DDR": 557.0}
    assert module_total(first.watts()) == pytest.approx(3.14)
    assert second.instant_mw["VDD_IN"] == 5297.0 and second.instant_mw["VDD_SYS_CPU"] == 1917.0
    assert "RAM" not in second.instant_mw and "SWAP" not in second.instant_mw  # MB figures are not rails


def test_tegrastats_agx_xavier_short_rail_names_sum():
    power = parse_tegrastats(lines("agx_xavier.txt")[0])
    assert power.instant_mw == {"GPU": 463.0, "CPU": 618.0, "SOC": 2936.0, "CV": 0.0, "VDDRQ": 309.0,
                                "SYS5V": 3306.0}
    # no input rail on AGX Xavier: the sum, 463 + 618 + 2936 + 0 + 309 + 3306 = 7632 mW
    assert module_total(power.watts()) == pytest.approx(7.632)


def test_tegrastats_agx_orin_units_unconnected_channels_and_jetpack7():
    jp5, jp7 = (parse_tegrastats(line) for line in lines("agx_orin.txt"))
    assert jp5.instant_mw == {"VDD_GPU_SOC": 2340.0, "VDD_CPU_CV": 390.0, "VIN_SYS_5V0": 4025.0,
                              "VDDQ_VDD2_1V8AO": 301.0}  # the two "NC" channels dropped
    assert module_total(jp5.watts()) == pytest.approx(7.056)  # 2340 + 390 + 4025 + 301
    assert jp7.instant_mw == {"VDD_GPU_SOC": 5139.0, "VDD_CPU_CV": 3268.0, "VIN_SYS_5V0": 5500.0}
    assert "cpu@52.968C" not in " ".join(jp7.instant_mw)


def test_tegrastats_line_without_rails():
    assert parse_tegrastats("RAM 4722/7844MB (lfb 1x512kB) EMC_FREQ 2%@1866 GR3D_FREQ 10%@1300").instant_mw == {}


def test_jetson_meter_integrates_recorded_rails_on_a_fake_clock():
    samples = iter([parse_tegrastats(line).watts() for line in lines("tx2.txt")] * 2)
    clock = FakeClock()
    meter = JetsonMeter(lambda: next(samples), "recorded tegrastats", clock=clock, threaded=False)
    assert meter.domains()[3] == "VDD_IN"
    session = MeterSession(meter, poll_s=None, clock=clock).start()  # sample 2 (line 2) at t=0
    clock.t = 2.0
    result = session.stop()  # sample 3 (line 1) at t=2
    # VDD_IN: 2 s x (5.297 + 3.140) / 2 = 8.437 J; the module total is the input rail's
    assert result.joules["VDD_IN"] == pytest.approx(8.437)
    assert result.total_j == pytest.approx(8.437)
    assert result.joules["VDD_SYS_CPU"] == pytest.approx(2 * (1.917 + 0.536) / 2)


# ------------------------------------------------------------------------------------------------ integration
def test_trapezoid_on_a_fake_clock():
    integrator = PowerIntegrator()
    for t, w in [(0.0, 5.0), (1.0, 7.0), (3.0, 7.0), (3.5, 1.0)]:
        integrator.add(t, {"rail": w})
    assert integrator.joules["rail"] == pytest.approx(6.0 + 14.0 + 2.0)  # 1*(5+7)/2 + 2*7 + 0.5*(7+1)/2
    integrator.add(2.0, {"rail": 100.0})  # a late sample from the past is ignored
    assert integrator.joules["rail"] == pytest.approx(22.0)


def test_power_sampler_thread_integrates_constant_power_exactly():
    sampler = PowerSampler(lambda: {"board": 10.0}, interval_s=0.01)
    start, t0 = sampler.read(), time.monotonic()
    time.sleep(0.1)
    end, t1 = sampler.read(), time.monotonic()
    sampler.close()
    assert sampler._thread is None
    # constant power: every trapezoid is exact whatever the sampling times, so J = 10 W x the time between reads
    assert end["board"] - start["board"] == pytest.approx(10.0 * (t1 - t0), rel=0.05)


def test_measure_context_manager():
    clock = FakeClock()
    meter = JetsonMeter(lambda: {"VDD_IN": 4.0}, "constant", clock=clock, threaded=False)
    with measure(meter, poll_s=None, clock=clock) as m:
        clock.t = 3.0
    assert m.measurement.total_j == pytest.approx(12.0) and m.measurement.seconds == 3.0


# ------------------------------------------------------------------------------------------------ NVML
class NVMLError(Exception):
    pass


class FakeNvml:
    """pynvml's calls with recorded-shape readings: energy in mJ, power in mW (as the real API returns)."""

    def __init__(self, sequence: dict, energy_supported: bool, clock: FakeClock):
        self.sequence, self.energy_supported, self.clock = sequence, energy_supported, clock
        self.energy_reads = [0] * len(sequence["devices"])
        self.shut = False

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shut = True

    def nvmlDeviceGetCount(self):
        return len(self.sequence["devices"])

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.energy_supported:
            raise NVMLError("Not Supported")
        readings = self.sequence["energy_mj_per_device"][handle]
        value = readings[min(self.energy_reads[handle], len(readings) - 1)]
        self.energy_reads[handle] += 1
        return value

    def nvmlDeviceGetPowerUsage(self, handle):
        sample = max((s for s in self.sequence["power_samples"] if s["t"] <= self.clock.t), key=lambda s: s["t"])
        return sample["mw"][handle]


@pytest.fixture
def titan():
    return json.loads((DATA / "nvml" / "titan_rtx_sequence.json").read_text())


def test_nvml_energy_counter_in_millijoules(titan):
    nvml = FakeNvml(titan, energy_supported=True, clock=FakeClock())
    meter = NvmlMeter(nvml, threaded=False)
    assert meter.mode == "energy counter" and meter.domains() == ["gpu0", "gpu1"]
    nvml.energy_reads = [0, 0]  # the probe read once; start the recorded sequence over
    result = MeterSession(meter, poll_s=None, clock=FakeClock()).start().stop()
    assert result.joules == pytest.approx({"gpu0": 952.494, "gpu1": 952.494})  # 952494 mJ each
    assert result.total_j == pytest.approx(1904.988)
    meter.close()
    assert nvml.shut


def test_nvml_power_sampling_when_the_counter_is_not_supported(titan):
    clock = FakeClock()
    meter = NvmlMeter(FakeNvml(titan, energy_supported=False, clock=clock), clock=clock, threaded=False)
    assert meter.mode == "power sampling"
    session = MeterSession(meter, poll_s=None, clock=clock).start()
    for t in (0.5, 1.0, 1.5, 2.0):
        clock.t = t
        meter.sampler.sample()
    result = session.stop()
    # gpu0 in W: 0.5*(15.87+15.87)/2 + 0.5*(15.87+279.5)/2 + 0.5*(279.5+280)/2 + 0.5*(280+15.87)/2 = 295.62 J
    assert result.joules["gpu0"] == pytest.approx(295.62)
    assert result.joules["gpu1"] == pytest.approx(16.12 * 2.0)


# ------------------------------------------------------------------------------------------------ detection
def no_module():
    raise ImportError("no module named pynvml", name="pynvml")


def no_jetson():
    raise FileNotFoundError("jetson-stats (jtop) not installed and no tegrastats on PATH")


def test_detect_meter_on_an_empty_host_is_none(tmp_path):
    assert detect_meter(tmp_path, import_nvml=no_module, jetson=no_jetson) is None
    search = find_meters(tmp_path, import_nvml=no_module, jetson=no_jetson)
    assert search.meters == [] and set(search.reasons) == {"rapl", "nvml", "jetson"}
    assert search.reasons["nvml"] == "pynvml not installed"


def test_detect_meter_finds_rapl_first_on_a_recorded_tree():
    meter = detect_meter(DATA / "rapl" / "recorded", import_nvml=no_module, jetson=no_jetson)
    assert isinstance(meter, RaplMeter) and meter.name == "rapl"


def test_this_vm_has_no_meter():
    """Where the suite runs without RAPL, pynvml and Jetson tools (this VM), nothing is detected."""
    if Path("/sys/class/powercap").exists() or shutil.which("tegrastats"):
        pytest.skip("this host exposes a meter source")
    try:
        import pynvml  # noqa: F401
        pytest.skip("pynvml is installed here")
    except ImportError:
        pass
    assert detect_meter() is None


# ------------------------------------------------------------------------------------------------ run metrics
def test_run_without_a_meter_says_modelled():
    metrics = energy_metrics(None, "vm", {"a": "vm", "b": "vm"}, 0.5, {"rapl": "no zones"})
    assert metrics["energy"].startswith(NO_METER)
    assert NO_METER == "modelled: no energy meter on this host (looked for RAPL, NVML, Jetson rails)"
    assert metrics["energy_meter"] is None and metrics["energy_meter_search"] == {"rapl": "no zones"}
    assert "measured_energy_j" not in metrics


def test_host_energy_without_a_meter_measures_nothing():
    empty = MeterSearch(reasons={"rapl": "none", "nvml": "none", "jetson": "none"})
    with host_energy(lambda: empty) as energy:
        pass
    assert energy.measurement is None
    assert energy.metrics({"a": energy.host})["energy"].startswith("modelled: no energy meter")


def test_run_with_a_meter_on_the_host_of_every_rank():
    measured = Measurement("rapl", "this host's CPU packages and DRAM (RAPL)", {"package-0": 300.0}, 300.0, 10.0)
    metrics = energy_metrics(measured, "box", {"a": "box", "b": "box"}, 0.5)
    assert metrics["energy_meter"] == "rapl" and metrics["measured_energy_j"] == 300.0
    assert metrics["measured_energy_whole_host"] is True and "whole host" in metrics["energy"]
    assert metrics["measured_mean_power_w"] == 30.0
    assert metrics["measured_mean_power_x_iteration_time_j"] == pytest.approx(15.0)
    other = energy_metrics(measured, "box", {"a": "box", "b": "far"}, None)
    assert other["measured_energy_whole_host"] is False and "far not metered" in other["energy"]


def test_host_energy_measures_with_a_found_meter():
    class Constant(Meter):
        name, covers = "fake", "a constant counter"

        def __init__(self):
            self.value = 0.0

        def domains(self):
            return ["all"]

        def read(self):
            self.value += 5.0
            return {"all": self.value}

    with host_energy(lambda: MeterSearch(meters=[Constant()]), poll_s=None) as energy:
        pass
    assert energy.measurement.meter == "fake" and energy.measurement.total_j == pytest.approx(5.0)


@pytest.mark.slow
def test_a_real_run_on_a_host_without_meters_says_modelled(tmp_path):
    """Two real worker processes (gloo): the report's energy metrics come from `host_energy`."""
    from edgepool.plan import PipelinePlan, Plan, StagePlan
    from edgepool.runtime import ModelSpec, RunOptions, execute

    stages = [StagePlan(layers=(0, 3), devices=["a"], shares=[1.0]), StagePlan(layers=(3, 6), devices=["b"],
                                                                                 shares=[1.0])]
    plan = Plan(planner="pipedream", model="tied-mlp", cluster="test", num_layers=6, batch=6, microbatches=2,
                schedule="1f1b", pipelines=[PipelinePlan(stages=stages)])
    toy = ModelSpec(factory="runtime_toy:tied_mlp", kwargs={"width": 8, "depth": 6}, seed=1)
    report = execute(plan, None, "local", RunOptions(steps=2, model=toy, env={"PYTHONPATH": str(Path(__file__).parent)},
                                                     timeout_s=90, run_dir=tmp_path)).report
    found = find_meters()
    for meter in found.meters:
        meter.close()
    if found.meters:
        assert report.metrics["energy_meter"] == found.meters[0].name and report.metrics["measured_energy_j"] >= 0
    else:
        assert report.metrics["energy"].startswith(NO_METER) and report.metrics["energy_meter"] is None
    assert all(d.energy_source == "modelled" for d in report.per_device.values())


def test_the_power_profiler_reads_watts_through_the_meters():
    """`edgepool power profile` samples power through this package (no sensor code of its own)."""
    from edgepool.power.profiler import PowerSensor

    class Counter(Meter):
        name, covers = "fake", "a test counter"
        joules = 0.0

        def domains(self):
            return ["all"]

        def read(self):
            return {"all": self.joules}

    meter, clock = Counter(), FakeClock()
    sensor = PowerSensor(meter, clock)
    meter.joules, clock.t = 50.0, 10.0
    assert sensor.read() == pytest.approx(5.0)
    meter.joules, clock.t = 80.0, 12.0
    assert sensor.read() == pytest.approx(15.0)
    assert sensor.name == "fake (a test counter)"
