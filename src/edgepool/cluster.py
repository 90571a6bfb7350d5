"""`Cluster`: devices and the links between them, loaded from YAML and validated with clear errors.

A spec names devices (a catalog `type`, explicit `spec` numbers, or `type: local` for a measured profile of
this machine) and links. Pairs without an explicit link use `default_link`; a link may belong to a shared
`medium` (one Wi-Fi network), whose capacity all transfers on it share.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import networkx as nx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgepool.catalog import device_names, get_device
from edgepool.device import Device
from edgepool.errors import SpecError
from edgepool.units import parse_bandwidth, parse_size, parse_time

# Every pair of devices gets a link, so memory and time grow with the square of the device count: 1024 devices
# load in seconds and about 200 MB; 10,000 would need tens of GB. Larger pools are sites of clusters.
MAX_DEVICES = 1024


# ----------------------------------------------------------------------------- the spec (YAML schema)
class LinkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    between: tuple[str, str] | None = None
    bandwidth: float
    latency: float = 0.0
    medium: str | None = None

    _bw = field_validator("bandwidth", mode="before")(lambda v: parse_bandwidth(v))
    _lat = field_validator("latency", mode="before")(lambda v: parse_time(v))


class MediumSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bandwidth: float
    _bw = field_validator("bandwidth", mode="before")(lambda v: parse_bandwidth(v))


class DeviceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    type: str | None = None
    spec: dict[str, Any] | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    count: int = Field(default=1, ge=1, description="expand into NAME-0 .. NAME-(count-1)")
    location: tuple[float, float] | None = None
    address: str | None = None
    power_mode: str | None = None
    zone: str | None = Field(default=None, description="devices of one zone share the zone's link")

    @field_validator("count")
    @classmethod
    def _count_bound(cls, value: int) -> int:
        if value > MAX_DEVICES:
            raise ValueError(f"an integer from 1 to {MAX_DEVICES} (a cluster holds at most {MAX_DEVICES} devices)")
        return value

    @model_validator(mode="after")
    def _type_or_spec(self) -> "DeviceSpec":
        if (self.type is None) == (self.spec is None):
            raise ValueError("give exactly one of 'type' (a catalog entry or 'local') or 'spec' (explicit numbers)")
        if self.type is not None and self.type != "local" and self.type not in device_names():
            raise ValueError(f"unknown device type {self.type!r}; accepted: local, {', '.join(device_names())}")
        return self


class ClusterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "cluster"
    description: str = ""
    sources: dict[str, str] = Field(default_factory=dict)
    devices: list[DeviceSpec] = Field(min_length=1)
    default_link: LinkSpec | None = None
    zones: dict[str, LinkSpec] = Field(default_factory=dict)
    links: list[LinkSpec] = Field(default_factory=list)
    media: dict[str, MediumSpec] = Field(default_factory=dict)


# ----------------------------------------------------------------------------- the runtime object
@dataclass(frozen=True)
class Link:
    """Bandwidth in bytes/s, latency in seconds; `medium` names a shared network, if any."""

    bandwidth: float
    latency_s: float = 0.0
    medium: str | None = None


@dataclass
class Cluster:
    name: str
    devices: dict[str, Device]
    graph: nx.Graph
    media: dict[str, float] = field(default_factory=dict)  # medium -> shared capacity, bytes/s
    locations: dict[str, tuple[float, float]] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    power_modes: dict[str, str] = field(default_factory=dict)
    zones: dict[str, str] = field(default_factory=dict)  # device -> zone
    source: str | None = None

    @property
    def names(self) -> list[str]:
        return list(self.devices)

    def __len__(self) -> int:
        return len(self.devices)

    def link(self, a: str, b: str) -> Link:
        """The direct link, or the route's bottleneck bandwidth and summed latency when there is none."""
        if a == b:
            return Link(bandwidth=float("inf"), latency_s=0.0)
        if self.graph.has_edge(a, b):
            return self.graph.edges[a, b]["link"]
        try:
            path = nx.shortest_path(self.graph, a, b, weight=lambda u, v, d: d["link"].latency_s + 1e-9)
        except (nx.NetworkXNoPath, nx.NodeNotFound) as exc:
            raise ValueError(f"no route between devices {a!r} and {b!r} in cluster {self.name!r}") from exc
        hops = [self.graph.edges[u, v]["link"] for u, v in zip(path, path[1:])]
        media = {h.medium for h in hops}
        return Link(bandwidth=min(h.bandwidth for h in hops), latency_s=sum(h.latency_s for h in hops),
                    medium=media.pop() if len(media) == 1 else None)

    def medium_capacity(self, medium: str | None) -> float | None:
        return self.media.get(medium) if medium else None

    def subcluster(self, names: list[str]) -> "Cluster":
        return Cluster(name=f"{self.name}[{len(names)}]", devices={n: self.devices[n] for n in names},
                       graph=self.graph.subgraph(names).copy(), media=dict(self.media),
                       locations={n: self.locations[n] for n in names if n in self.locations},
                       addresses={n: self.addresses[n] for n in names if n in self.addresses},
                       power_modes={n: m for n, m in self.power_modes.items() if n in names},
                       zones={n: z for n, z in self.zones.items() if n in names}, source=self.source)

    def with_power_modes(self, modes: dict[str, str]) -> "Cluster":
        """The same cluster with these devices' power modes set (a plan's modes, or a search's candidate)."""
        if all(self.power_modes.get(d) == m for d, m in modes.items()):
            return self
        for d, m in modes.items():
            if d not in self.devices:
                raise SpecError(field="power_modes", value=d, accepted=f"devices of {self.name!r}: "
                                                                      f"{', '.join(self.devices)}")
            try:
                self.devices[d].mode(m)
            except ValueError as exc:
                raise SpecError(field=f"power_modes.{d}", value=m, accepted=str(exc).split("accepted: ")[-1]) from None
        return replace(self, power_modes={**self.power_modes, **modes})

    @classmethod
    def uniform(cls, devices: list[Device], bandwidth: float, latency_s: float = 0.0,
                name: str = "cluster", medium: str | None = None,
                medium_capacity: float | None = None) -> "Cluster":
        """A fully connected cluster with one kind of link: handy for tests, benchmarks and planners."""
        graph = nx.Graph()
        for d in devices:
            graph.add_node(d.name)
        link = Link(bandwidth=bandwidth, latency_s=latency_s, medium=medium)
        for i, a in enumerate(devices):
            for b in devices[i + 1:]:
                graph.add_edge(a.name, b.name, link=link)
        media = {medium: medium_capacity} if medium and medium_capacity else {}
        return cls(name=name, devices={d.name: d for d in devices}, graph=graph, media=media)


# ----------------------------------------------------------------------------- loading
def _build_device(spec: DeviceSpec, name: str) -> Device:
    if spec.type == "local":
        from edgepool.local_device import measure_local_device
        base = measure_local_device().model_dump()
    elif spec.type is not None:
        base = get_device(spec.type).model_dump()
    else:
        base = {"sources": {"all": "explicit numbers in the cluster spec"}}
    base.update(_parse_numbers(spec.spec or {}, "spec"))
    base.update(_parse_numbers(spec.overrides, "overrides"))
    base["name"] = name
    return Device(**base)


def _parse_numbers(numbers: dict[str, Any], where: str) -> dict[str, Any]:
    """Sizes and bandwidths with units; a bad one raises SpecError naming its key (the caller adds the device)."""
    out = dict(numbers)
    for key, parse in (("memory_bytes", parse_size), ("memory_bandwidth", parse_bandwidth)):
        if key in out and (key == "memory_bytes" or isinstance(out[key], str)):
            try:
                out[key] = parse(out[key])
            except ValueError as exc:
                raise SpecError(field=f"{where}.{key}", value=out[key], accepted=str(exc)) from None
    return out


def _shown(value: Any) -> Any:
    """A value short enough for a one-line error: a whole mapping or list is named by its type and size."""
    if isinstance(value, (dict, list)) and len(repr(value)) > 80:
        return f"({type(value).__name__} of {len(value)} entries)"
    return value


def _loc(error: dict, raw: dict) -> str:
    """'devices[2] (pi).type' from pydantic's location tuple, naming devices where possible."""
    parts: list[str] = []
    node: Any = raw
    for key in error["loc"]:
        if isinstance(key, int):
            parts[-1] += f"[{key}]"
            try:
                node = node[key]
                if isinstance(node, dict) and "name" in node:
                    parts[-1] += f" ({node['name']})"
            except (IndexError, KeyError, TypeError):
                node = None
        else:
            parts.append(str(key))
            node = node.get(key) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"


_REQUIRED = {"devices": "a list of devices, e.g. [{name: pi, type: rpi5}]", "name": "a device name",
             "bandwidth": "a bandwidth, e.g. '100Mbps'"}


def cluster_from_dict(raw: Any, source: str = "<dict>") -> Cluster:
    """Build a `Cluster` from a parsed YAML mapping; every problem is a `SpecError` naming the field.

    The checks run in a fixed order (schema, device count, devices, media, links, connectivity), so the first
    problem a spec has is always the one reported."""
    spec = _validated_spec(raw, source)
    _check_device_total(spec, source)
    devices, locations, addresses, modes, zones = _parse_devices(spec, source)
    _check_media(spec, source)
    graph = _build_graph(spec, devices, zones, source)
    _check_connected(graph, devices, source)
    return Cluster(name=spec.name, devices=devices, graph=graph,
                   media={k: v.bandwidth for k, v in spec.media.items()},
                   locations=locations, addresses=addresses, power_modes=modes, zones=zones, source=source)


def _validated_spec(raw: Any, source: str) -> ClusterSpec:
    """The schema check: pydantic's first error becomes one SpecError, so the user sees a single readable line
    (with the device's name in the field path) instead of pydantic's report."""
    if not isinstance(raw, dict):
        raise SpecError(field="(top level)", value=type(raw).__name__, source=source,
                        accepted="a mapping with 'devices' (list) and optional 'links', 'default_link', 'media'")
    try:
        return ClusterSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            value, msg = None, f"the field is required: {_REQUIRED.get(err['loc'][-1], 'give a value')}"
        else:
            value = _shown(err.get("input"))
        raise SpecError(field=_loc(err, raw), value=value, accepted=msg, source=source) from None


def _check_device_total(spec: ClusterSpec, source: str) -> None:
    """Refuse more than MAX_DEVICES before building anything: links grow with the square of the device count."""
    total = sum(d.count for d in spec.devices)
    if total > MAX_DEVICES:
        raise SpecError(field="devices", value=f"{total} devices (counts included)", source=source,
                        accepted=f"at most {MAX_DEVICES} devices in one cluster",
                        hint="every pair of devices has a link; split a larger pool into clusters")


def _parse_devices(spec: ClusterSpec, source: str):
    """Expand `count`, build each device and collect its location, address, power mode and zone, device by
    device, so a problem is reported at the first device that has it."""
    devices: dict[str, Device] = {}
    locations, addresses, modes, zones = {}, {}, {}, {}
    for i, dspec in enumerate(spec.devices):
        names = [dspec.name] if dspec.count == 1 else [f"{dspec.name}-{k}" for k in range(dspec.count)]
        for name in names:
            if name in devices:
                raise SpecError(field=f"devices[{i}].name", value=name, source=source,
                                accepted="a name not used by another device")
            devices[name] = _checked_device(dspec, name, i, source)
            if dspec.location:
                locations[name] = dspec.location
            if dspec.address:
                addresses[name] = dspec.address
            if dspec.power_mode:
                modes[name] = dspec.power_mode
            if dspec.zone:
                _check_zone(spec, dspec, i, source)
                zones[name] = dspec.zone
    return devices, locations, addresses, modes, zones


def _checked_device(dspec: DeviceSpec, name: str, i: int, source: str) -> Device:
    """One device, its numbers and power mode checked: errors from deep inside (unit parsing, Device's own
    validation, the mode table) are re-raised with the device's place in the spec in front of the field."""
    where = f"devices[{i}] ({dspec.name})"
    try:
        device = _build_device(dspec, name)
    except SpecError as exc:
        raise SpecError(field=f"{where}.{exc.field}", value=exc.value, accepted=exc.accepted,
                        source=source) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        field_name = ".".join(str(p) for p in err["loc"])
        raise SpecError(field=f"{where}.{field_name}", value=_shown(err.get("input")),
                        accepted=err["msg"].removeprefix("Value error, "), source=source) from None
    if dspec.power_mode is not None:
        try:
            device.mode(dspec.power_mode)
        except ValueError as exc:
            raise SpecError(field=f"{where}.power_mode", value=dspec.power_mode,
                            accepted=str(exc).split("accepted: ")[-1], source=source) from None
    return device


def _check_zone(spec: ClusterSpec, dspec: DeviceSpec, i: int, source: str) -> None:
    """A device's zone must be declared: the zone's link is what connects its members."""
    if dspec.zone not in spec.zones:
        raise SpecError(field=f"devices[{i}] ({dspec.name}).zone", value=dspec.zone, source=source,
                        accepted=f"a zone declared under 'zones' ({', '.join(spec.zones) or 'none declared'})")


def _check_media(spec: ClusterSpec, source: str) -> None:
    """Every medium a link names must be declared: its capacity is what transfers on it share."""
    for medium_name in {l.medium for l in [*spec.links, *spec.zones.values(), spec.default_link] if l and l.medium}:
        if medium_name not in spec.media:
            raise SpecError(field="links.medium", value=medium_name, source=source,
                            accepted=f"a medium declared under 'media' ({', '.join(spec.media) or 'none declared'})")


def _build_graph(spec: ClusterSpec, devices: dict[str, Device], zones: dict[str, str], source: str) -> nx.Graph:
    """Links in order of precedence: the default link for every pair, then each zone's link among its
    members, then explicit links; a later one replaces an earlier one on the same pair."""
    graph = nx.Graph()
    graph.add_nodes_from(devices)
    if spec.default_link:
        dl = Link(spec.default_link.bandwidth, spec.default_link.latency, spec.default_link.medium)
        _connect_all(graph, list(devices), dl)
    for zone, zspec in spec.zones.items():
        members = [n for n, z in zones.items() if z == zone]
        _connect_all(graph, members, Link(zspec.bandwidth, zspec.latency, zspec.medium))
    for i, lspec in enumerate(spec.links):
        _check_link_ends(lspec, i, devices, source)
        graph.add_edge(*lspec.between, link=Link(lspec.bandwidth, lspec.latency, lspec.medium))
    return graph


def _connect_all(graph: nx.Graph, names: list[str], link: Link) -> None:
    """One link object on every pair of `names` (a default link or a zone's)."""
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            graph.add_edge(a, b, link=link)


def _check_link_ends(lspec: LinkSpec, i: int, devices: dict[str, Device], source: str) -> None:
    """An explicit link needs two different, known devices: anything else is a typo worth naming."""
    if lspec.between is None:
        raise SpecError(field=f"links[{i}].between", value=None, source=source,
                        accepted="two device names, e.g. [desktop, pi]")
    for end in lspec.between:
        if end not in devices:
            raise SpecError(field=f"links[{i}].between", value=end, source=source,
                            accepted=", ".join(devices))
    if lspec.between[0] == lspec.between[1]:
        raise SpecError(field=f"links[{i}].between", value=list(lspec.between), source=source,
                        accepted="two different devices")


def _check_connected(graph: nx.Graph, devices: dict[str, Device], source: str) -> None:
    """Every device must reach every other: planners route transfers over the graph."""
    if len(devices) > 1 and not nx.is_connected(graph):
        isolated = [n for n in devices if graph.degree(n) == 0] or list(next(iter(nx.connected_components(graph))))
        raise SpecError(field="links", value=f"devices {isolated} unreachable", source=source,
                        accepted="links (or a default_link) connecting every device")


def load_cluster(path: str | Path) -> Cluster:
    """Load a cluster YAML file; a name without a path may refer to a shipped example (home, jetson-lab, site64)."""
    path = Path(path)
    accepted = "a cluster YAML file or one of " + ", ".join(example_cluster_names())
    if not path.exists():
        example = example_cluster_path(str(path))
        if example is None:
            raise SpecError(field="cluster", value=str(path), accepted=accepted)
        path = example
    if not path.is_file():
        raise SpecError(field="cluster", value=str(path), accepted=accepted, hint="this is a directory")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(field="cluster", value=str(path), accepted=accepted, hint=f"cannot read it: {exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(field="(YAML syntax)", value=_yaml_where(exc), source=str(path),
                        accepted="valid YAML") from None
    return cluster_from_dict(raw, source=str(path))


def _yaml_where(exc: yaml.YAMLError) -> str:
    """'line 3, column 7: found unexpected end of stream', as a JSON error says where it is."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def _examples_dir() -> Path | None:
    for candidate in (Path.cwd() / "examples" / "clusters",
                      Path(__file__).resolve().parents[2] / "examples" / "clusters"):
        if candidate.is_dir():
            return candidate
    return None


def example_cluster_names() -> list[str]:
    d = _examples_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d else []


def example_cluster_path(name: str) -> Path | None:
    d = _examples_dir()
    if d is None:
        return None
    path = d / (name if name.endswith(".yaml") else f"{name}.yaml")
    return path if path.is_file() else None
