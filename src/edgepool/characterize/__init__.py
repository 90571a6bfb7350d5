"""`edgepool characterize`: a real input pipeline (PNG digits decoded and augmented on the CPU, a small CNN
training step) measured across DataLoader workers, prefetching, pinned memory, batch size, storage, page
cache, emulated power modes and isolated runtimes; fetch stall, compute, CPU utilization and variability."""
from edgepool.characterize.measurement import Measurement
from edgepool.characterize.setting import Setting
from edgepool.characterize.sweep import AXES, Characterization, SweepPlan, build_plan, characterize

__all__ = ["AXES", "Characterization", "Measurement", "Setting", "SweepPlan", "build_plan", "characterize"]
