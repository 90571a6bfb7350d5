"""The probes: short measurements run where the work will run, through the one worker harness
(`edgepool.runtime.harness`) and a `Launcher`, so that the same probe measures local processes or the emulated
testbed's devices (their CPU quotas and shaped links). What they measure feeds the cost model of the runtime
(`runtime.emulation`) and the inference collectives' costs (`CommCosts`).

- `comm`: what messages and collectives cost: the CPU one gloo message costs each end
  (`measure_message_cpu_s`), and the inference collectives fitted into `CommCosts` (`probe_comm`);
  `comm_worker` is the device side.
- `speed`: what fraction of its CPU quota each testbed device really gets (`measure_quota_efficiency`);
  `speed_worker` is the device side.

Nothing is imported here, so that `python -m edgepool.runtime.probes.<worker>` loads only what a worker needs.
"""
