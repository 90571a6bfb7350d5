"""Called from inside a worker process; imports nothing heavy and does nothing outside the testbed.

With `Testbed(..., cpu_quota_at_start=False)` a worker starts without its CPU quota, so importing torch and
building the model do not take a slow device's 30x longer, and switches the quota on itself once it is set
up (before the iterations it measures):

    from edgepool.testbed.worker import apply_cpu_quota
    apply_cpu_quota()  # no-op under the local launcher or when the quota applied from the start
"""
from __future__ import annotations

import os

QUOTA_FD_ENV = "EDGEPOOL_CPU_QUOTA_FD"
QUOTA_US_ENV = "EDGEPOOL_CPU_QUOTA_US"


def apply_cpu_quota() -> bool:
    """Apply this device's deferred CPU quota; True when one was applied now."""
    fd, quota = os.environ.pop(QUOTA_FD_ENV, None), os.environ.pop(QUOTA_US_ENV, None)
    if not fd or not quota:
        return False
    try:
        os.write(int(fd), quota.encode())  # an fd onto the cgroup's cpu.cfs_quota_us, opened by the testbed
    finally:
        os.close(int(fd))
    return True
