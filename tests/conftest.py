import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (cgroups, network namespaces, tc); CI runs as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
