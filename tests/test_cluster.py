
import pytest

from edgepool.cluster import Cluster, cluster_from_dict, example_cluster_names, load_cluster
from edgepool.catalog import get_device
from edgepool.errors import SpecError

GOOD = {
    "name": "t",
    "devices": [{"name": "a", "type": "rpi5"}, {"name": "b", "type": "jetson-orin-nano"}],
    "default_link": {"bandwidth": "100Mbps", "latency": "2ms"},
}


def bad(**change):
    raw = {**GOOD, **change}
    return raw


def test_examples_load_with_expected_sizes():
    assert {"home", "jetson-lab", "site64"} <= set(example_cluster_names())
    sizes = {name: len(load_cluster(name)) for name in ("home", "jetson-lab", "site64")}
    assert sizes == {"home": 4, "jetson-lab": 6, "site64": 64}


def test_links_units_zones_media_and_routes():
    home = load_cluster("home")
    assert home.link("laptop", "jetson").bandwidth == pytest.approx(125e6)  # 1 Gbps in bytes/s
    wifi = home.link("pi", "phone")
    assert wifi.medium == "wifi" and wifi.latency_s == pytest.approx(0.003)
    assert home.medium_capacity("wifi") == pytest.approx(300e6 / 8)
    site = load_cluster("site64")
    assert site.link("a-agx-0", "a-pi-3").bandwidth == pytest.approx(125e6)
    assert site.link("a-agx-0", "d-pi4-0").bandwidth == pytest.approx(12.5e6)


def test_route_over_missing_direct_link_uses_bottleneck():
    raw = {"devices": [{"name": n, "type": "rpi4"} for n in "abc"],
           "links": [{"between": ["a", "b"], "bandwidth": "1Gbps", "latency": "1ms"},
                     {"between": ["b", "c"], "bandwidth": "10Mbps", "latency": "5ms"}]}
    c = cluster_from_dict(raw)
    route = c.link("a", "c")
    assert route.bandwidth == pytest.approx(10e6 / 8) and route.latency_s == pytest.approx(0.006)


def test_explicit_spec_overrides_and_count():
    raw = {"devices": [{"name": "x", "spec": {"peak_flops": {"fp32": 1e11}, "memory_bytes": "2GiB",
                                              "memory_bandwidth": "10GB/s", "cpu_cores": 4}},
                       {"name": "p", "type": "rpi5", "count": 3, "overrides": {"memory_bytes": "4GiB"}}],
           "default_link": {"bandwidth": "1Gbps"}}
    c = cluster_from_dict(raw)
    assert c.names == ["x", "p-0", "p-1", "p-2"]
    assert c.devices["x"].memory_bytes == 2**31 and c.devices["p-1"].memory_bytes == 2**32


@pytest.mark.parametrize("raw, field, accepted", [
    (bad(devices=[{"name": "a", "type": "rpi9"}]), "devices[0] (a)", "rpi5"),
    (bad(devices=[{"name": "a"}]), "devices[0] (a)", "exactly one of 'type'"),
    (bad(devices=[{"name": "a", "type": "rpi5", "colour": "red"}]), "devices[0] (a).colour", "Extra inputs"),
    (bad(devices=[]), "devices", "at least 1"),
    (bad(default_link={"bandwidth": "fast"}), "default_link.bandwidth", "100Mbps"),
    (bad(default_link={"bandwidth": 100}), "default_link.bandwidth", "no unit"),
    (bad(default_link={"bandwidth": "100Mbps", "latency": "-1ms"}), "default_link.latency", ">= 0"),
    (bad(default_link={"bandwidth": "100Mbps", "medium": "wifi"}), "links.medium", "declared under 'media'"),
    (bad(default_link=None), "links", "connecting every device"),
    (bad(links=[{"between": ["a", "zz"], "bandwidth": "1Gbps"}]), "links[0].between", "a, b"),
    (bad(links=[{"between": ["a", "a"], "bandwidth": "1Gbps"}]), "links[0].between", "two different"),
    (bad(links=[{"bandwidth": "1Gbps"}]), "links[0].between", "two device names"),
    (bad(devices=[{"name": "a", "type": "rpi5"}, {"name": "a", "type": "rpi4"}]), "devices[1].name", "not used"),
    (bad(devices=[{"name": "a", "type": "rpi5", "zone": "lab"}, {"name": "b", "type": "rpi5"}]),
     "devices[0] (a).zone", "declared under 'zones'"),
    (bad(devices=[{"name": "a", "type": "jetson-nano", "power_mode": "TURBO"}, {"name": "b", "type": "rpi5"}]),
     "power_mode", "MAXN"),
    (bad(devices=[{"name": "a", "type": "rpi5", "overrides": {"memory_bytes": "lots"}}, {"name": "b", "type": "rpi5"}]),
     "devices[0]", "4GiB"),
    (bad(devices=[{"name": "a", "spec": {"peak_flops": {"fp32": -1}, "memory_bytes": 1, "memory_bandwidth": 1,
                                         "cpu_cores": 1}}, {"name": "b", "type": "rpi5"}]), "peak_flops", "> 0"),
    (["not", "a", "mapping"], "(top level)", "a mapping"),
    # issue 14: each bad number is named by its own field (it once named power_mode), bounds are explicit
    *[(bad(devices=[{"name": "a", "type": "rpi5", "overrides": {"memory_bytes": v}}, {"name": "b", "type": "rpi5"}]),
       f"devices[0] (a).overrides.memory_bytes = {v!r}", want) for v, want in
      ((0, "> 0"), (1e400, "finite"), ("4 gigs", "4GiB"), ("1e400GiB", "finite"))],
    (bad(devices=[{"name": "a", "spec": {"peak_flops": {"fp32": 1e9}, "memory_bytes": "1GiB", "cpu_cores": 1,
                                         "memory_bandwidth": "fast"}}, {"name": "b", "type": "rpi5"}]),
     "devices[0] (a).spec.memory_bandwidth = 'fast'", "12.5MB/s"),
    (bad(devices=[{"name": "a", "type": "rpi5", "count": 10000}]), "devices[0] (a).count = 10000", "1 to 1024"),
    (bad(devices=[{"name": "a", "type": "rpi5", "count": 370376154}]), "count = 370376154", "1 to 1024"),
    (bad(devices=[{"name": "a", "type": "rpi5", "count": 600}, {"name": "b", "type": "rpi5", "count": 600}]),
     "devices = '1200 devices", "at most 1024"),
    ({"name": "x", "description": "a long description " * 20, "links": []}, "devices = None", "required"),
    (bad(extra_key=1), "extra_key", "Extra inputs"),
])
def test_every_bad_field_is_named(raw, field, accepted):
    with pytest.raises(SpecError) as info:
        cluster_from_dict(raw, source="c.yaml")
    message = str(info.value)
    assert message.startswith("c.yaml: ") and field in message and accepted in message
    assert "\n" not in message and len(message) < 400 and "long description" not in message


def test_bad_yaml_and_missing_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("devices: [\n")
    with pytest.raises(SpecError, match="broken.yaml.*YAML"):
        load_cluster(path)
    path.write_text("name: x\ndevices:\n  - {name: a, type: rpi5\n")  # where it is, as JSON errors say
    with pytest.raises(SpecError, match=r"broken.yaml: \(YAML syntax\) = \"line 4, column 1: expected ','"):
        load_cluster(path)
    with pytest.raises(SpecError, match="home"):
        load_cluster(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="cluster = .* a cluster YAML file .*directory"):
        load_cluster(tmp_path)


def test_a_thousand_devices_load_and_the_bound_is_quick():
    import time
    big = cluster_from_dict({"devices": [{"name": "p", "type": "rpi5", "count": 1024}],
                             "default_link": {"bandwidth": "1Gbps"}})
    assert len(big) == 1024 and big.link("p-0", "p-1023").bandwidth == 125e6
    start = time.monotonic()
    with pytest.raises(SpecError):
        cluster_from_dict({"devices": [{"name": "p", "type": "rpi5", "count": 370376154}]})
    assert time.monotonic() - start < 1.0


def test_uniform_cluster_helper():
    c = Cluster.uniform([get_device("rpi5").model_copy(update={"name": f"d{i}"}) for i in range(3)], 1e6, 0.001)
    assert len(c) == 3 and c.link("d0", "d2").bandwidth == 1e6
    assert c.subcluster(["d0", "d1"]).names == ["d0", "d1"]
