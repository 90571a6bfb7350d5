"""Run one worker process per device: locally, or on a cluster emulated on this host (the testbed)."""
from edgepool.testbed.launcher import (Launcher, LocalLauncher, ProcessLauncher, WorkerFailed, WorkerHandle,
                                       make_launcher)
from edgepool.testbed.system import TestbedUnavailable, unavailable_reason
from edgepool.testbed.testbed import (DeviceLimits, Emulation, Testbed, cleanup_leftovers, device_limits,
                                      emulated_cluster, host_core_device)

__all__ = ["Launcher", "LocalLauncher", "ProcessLauncher", "WorkerFailed", "WorkerHandle", "make_launcher",
           "Testbed", "TestbedUnavailable", "DeviceLimits", "Emulation", "cleanup_leftovers", "device_limits",
           "emulated_cluster", "host_core_device", "unavailable_reason"]
