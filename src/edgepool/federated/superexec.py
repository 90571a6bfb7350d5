"""A Flower SuperExec whose ClientApp processes are forked from a warm parent.

Flower's deployment runtime starts one `flwr-clientapp` process per message: every round, every device
imports flwr, torch, transformers and peft again (about 4 CPU-seconds here, 25 s on a device with 0.15 of a
core) before it trains. Flower's own answer is a pool of warm executors (for Kubernetes pods). This is the
same idea for one process: Flower's SuperExec loop (`run_superexec`) and Flower's ClientApp runner
(`run_clientapp`) unchanged, with the task process `os.fork()`ed from this process, which imported the heavy
modules (and optionally loaded the model) once. The SuperNode runs with `--isolation process` and this
process in its place, inside the same namespace and cgroup, so the device's CPU quota and memory limit still
bind every task. `--executor subprocess` in `edgepool federated run` keeps Flower's stock executor.

    python -m edgepool.federated.superexec --runtime-api-address 127.0.0.1:9094 --preload text
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

PRELOAD = {  # what a task of each kind imports; preloading it is the point of forking
    "image": ["torch", "edgepool.federated.client_app"],
    "text": ["torch", "transformers", "peft", "edgepool.federated.client_app"],
}


def _fork_executor_class():
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
    from flwr.supercore.superexec.executor.types import LaunchResult

    class ForkExecutor(SubprocessExecutor):
        """Forks ClientApp tasks from this warm process; anything else runs as Flower starts it."""

        def launch(self, spec):
            if spec.task_type != TaskType.CLIENT_APP:
                return super().launch(spec)
            pid = os.fork()
            if pid:
                return LaunchResult.accepted()
            code = 1
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                from flwr.supernode.runtime.run_clientapp import run_clientapp

                run_clientapp(runtime_api_address=spec.runtime_api_address, token=spec.token,
                              insecure=spec.insecure, certificates=None, parent_pid=spec.parent_pid)
                code = 0
            except SystemExit as exc:  # flwr_exit ends every task with sys.exit
                code = exc.code if isinstance(exc.code, int) else 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)

    return ForkExecutor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--preload", choices=sorted(PRELOAD), default="image")
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)

    for module in PRELOAD[args.preload]:
        importlib.import_module(module)
    import torch

    torch.set_num_threads(1)  # before anything computes: a forked child never inherits a thread pool
    from edgepool.federated.client_app import warm_up

    warm_up()  # the run's data and this device's model (EDGEPOOL_FEDERATED_SPEC, EDGEPOOL_DEVICE)
    from edgepool.testbed.worker import apply_cpu_quota

    apply_cpu_quota()  # the device's CPU quota (the whole cgroup: SuperNode and tasks too) from now on
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # finished tasks are reaped by the kernel

    from flwr.supercore.superexec import run_superexec as superexec_module

    executor_class = _fork_executor_class()
    superexec_module.get_executor = lambda *a, **k: executor_class()
    superexec_module.run_superexec(runtime_api_address=args.runtime_api_address, insecure=True,
                                   parent_pid=args.parent_pid)


if __name__ == "__main__":
    main()
