"""The pool on the command line: `edgepool agent` on each device, `edgepool pool up|show|export|key`, and what
`train --pool` (and the other commands' `--pool`) use to reach it."""
from __future__ import annotations

import json
import logging
import signal
import socket
import sys
from pathlib import Path

import typer
from rich.console import Console

from edgepool.atomic import write_text_atomic
from edgepool.cli.tables import narrow_table
from edgepool.errors import SpecError

DEFAULT_POOL = "127.0.0.1"  # `pool show/export` on the coordinator's own machine
KEY_HELP = "The pool key (64 hex digits; default: $EDGEPOOL_POOL_KEY, else the key file)."
KEY_FILE_HELP = "File holding the pool key (default: ~/.config/edgepool/pool.key, as `pool up` creates it)."
POOL_HELP = "HOST[:PORT] of the pool's coordinator (`edgepool pool up`); replaces --cluster."
# the key options every command with --pool takes
KEY_OPTION = typer.Option(None, "--key", help=KEY_HELP, envvar="EDGEPOOL_POOL_KEY", show_envvar=False)
KEY_FILE_OPTION = typer.Option(None, "--key-file", help=KEY_FILE_HELP)


def open_pool(pool: str, key: str | None, key_file: Path | None):
    """A `PoolClient` for `--pool/--key/--key-file`."""
    from edgepool.pool.client import PoolClient
    from edgepool.pool.key import resolve_key

    return PoolClient(pool, resolve_key(key, key_file))


def pool_cluster(pool: str, key: str | None, key_file: Path | None):
    """The live cluster of the pool (for the commands that only plan or simulate)."""
    with open_pool(pool, key, key_file) as client:
        return client.cluster()


def one_of(cluster: str | None, pool: str | None) -> None:
    """A command takes its devices from a spec (--cluster) or from the pool (--pool), not both."""
    if (cluster is None) == (pool is None):
        raise SpecError(field="--cluster/--pool", value=cluster or pool, accepted="exactly one of --cluster FILE "
                        "(a spec: emulated or local processes) and --pool HOST:PORT (the agents' devices)")


def cluster_of(cluster: str | None, pool: str | None, key: str | None, key_file: Path | None):
    """The devices to plan on: a spec (`--cluster`) or the live pool (`--pool`), exactly one of them."""
    from edgepool.cluster import load_cluster

    one_of(cluster, pool)
    return load_cluster(cluster) if pool is None else pool_cluster(pool, key, key_file)


def cluster_and_launcher(cluster: str | None, launcher: str, pool: str | None, key: str | None,
                         key_file: Path | None):
    """`--cluster`+`--launcher`, or `--pool`: (the Cluster, a launcher name or a `PoolLauncher` on the agents)."""
    from edgepool.cluster import load_cluster

    one_of(cluster, pool)
    if pool is None:
        return load_cluster(cluster), launcher
    from edgepool.pool.key import resolve_key
    from edgepool.pool.launcher import PoolLauncher

    secret = resolve_key(key, key_file)
    with open_pool(pool, key, key_file) as client:
        live, agents = client.live()
    return live, PoolLauncher(agents, secret, client.address, name=f"edgepool@{socket.gethostname()}")


def _logging(prefix: str) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {prefix}: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)


def _stop_on_sigterm() -> None:
    """`kill` ends the agent or the coordinator as Ctrl-C does: through their clean-up (workers stopped)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def register(app: typer.Typer) -> None:
    pool_app = typer.Typer(help="Form a pool of devices: `pool up` here, `edgepool agent` on each device.",
                           no_args_is_help=True)
    app.add_typer(pool_app, name="pool")

    @app.command()
    def agent(
        name: str = typer.Option(None, help="This device's name in the pool (default: the host name)."),
        join: str = typer.Option(None, "--join", help="HOST[:PORT] of the coordinator; default: find it by mDNS."),
        pool_name: str = typer.Option(None, "--pool-name", help="With mDNS: join only the pool of this name."),
        key: str = KEY_OPTION,
        key_file: Path = KEY_FILE_OPTION,
        port: int = typer.Option(0, min=0, max=65535, help="The agent's own port (jobs, link probes); 0: any."),
        discovery_timeout: float = typer.Option(30.0, min=1.0, help="Seconds per mDNS search before retrying."),
        allow_module: list[str] = typer.Option(None, "--allow-module", help="A module of your own that jobs may "
                                               "name as model factory or hook (repeatable); none by default."),
    ) -> None:
        """Put this device into a pool: measure it, join the coordinator, run the workers its jobs ask for."""
        from edgepool.pool.agent import Agent, AgentConfig
        from edgepool.pool.channel import Refused
        from edgepool.pool.client import parse_address
        from edgepool.pool.key import resolve_key

        name = name or socket.gethostname()
        secret = resolve_key(key, key_file)
        address = parse_address(join, field="--join") if join else None
        _logging(f"edgepool agent {name}")
        logging.getLogger("edgepool.pool").info("measuring this device (compute, memory, memory bandwidth)")
        runner = Agent(AgentConfig(name, secret, join=address, pool=pool_name, port=port,
                                   discovery_timeout_s=discovery_timeout,
                                   code_modules=frozenset(m.split(".")[0] for m in allow_module or [])))
        _stop_on_sigterm()
        try:
            runner.run()
        except Refused as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            pass

    @pool_app.command("up")
    def up(
        name: str = typer.Option("pool", help="The pool's name (announced by mDNS; agents may ask for it)."),
        port: int = typer.Option(29650, min=0, max=65535, help="The coordinator's port (agents and commands)."),
        dashboard_port: int = typer.Option(8650, min=0, max=65535, help="The dashboard's port."),
        host: str = typer.Option("0.0.0.0", help="Address to listen on."),
        key_file: Path = typer.Option(None, "--key-file", help="Where the pool key is (created when missing; "
                                                              "default ~/.config/edgepool/pool.key)."),
        discovery: bool = typer.Option(True, "--discovery/--no-discovery", help="Announce the pool by mDNS."),
        probe_seconds: float = typer.Option(1.0, min=0.1, max=10.0, help="Length of each link probe, per "
                                                                         "direction of each pair."),
        heartbeat_timeout: float = typer.Option(5.0, min=0.5, help="Seconds without a heartbeat before a "
                                                                   "device counts as gone."),
    ) -> None:
        """Start the pool's coordinator and dashboard here; runs until interrupted."""
        from edgepool.pool.coordinator import Coordinator
        from edgepool.pool.dashboard import Dashboard
        from edgepool.pool.key import create_key, fingerprint

        secret, path, created = create_key(key_file)
        _logging(f"edgepool pool {name}")
        coordinator = Coordinator(secret, name=name, host=host, port=port, heartbeat_timeout_s=heartbeat_timeout,
                                  probe_seconds=probe_seconds, announce=discovery)
        _stop_on_sigterm()
        try:
            with coordinator, Dashboard(coordinator.state, host=host, port=dashboard_port) as dashboard:
                out = Console(stderr=True)
                out.print(f"pool {name!r} up: coordinator port {coordinator.port}"
                          f"{' (announced by mDNS)' if discovery else ''}, dashboard "
                          f"http://{_shown_host(host)}:{dashboard.port}/")
                out.print(f"pool key {'created' if created else 'read'}: {path} (fingerprint "
                          f"{fingerprint(secret)}); `edgepool pool key` prints it")
                out.print(f"on each device: edgepool agent --key KEY"
                          f"{'' if discovery else f' --join {_shown_host(host)}:{coordinator.port}'}")
                coordinator.stop.wait()
        except KeyboardInterrupt:
            pass
        except OSError as exc:
            raise SpecError(field="--port/--dashboard-port", value=f"{port}/{dashboard_port}",
                            accepted="free ports", hint=str(exc)) from None

    @pool_app.command("key")
    def show_key(key_file: Path = KEY_FILE_OPTION) -> None:
        """Print the pool key (created when missing), to give to `edgepool agent --key` on each device."""
        from edgepool.pool.key import create_key

        secret, _, _ = create_key(key_file)
        typer.echo(secret.hex())

    @pool_app.command("show")
    def show(
        pool: str = typer.Option(DEFAULT_POOL, "--pool", help=POOL_HELP),
        key: str = KEY_OPTION,
        key_file: Path = KEY_FILE_OPTION,
        as_json: bool = typer.Option(False, "--json", help="Print the pool's state as JSON."),
    ) -> None:
        """The pool's devices (measured), links (measured) and members' state."""
        with open_pool(pool, key, key_file) as client:
            state = client.state()
        if as_json:
            typer.echo(json.dumps(state))
            return
        out = Console()
        table = narrow_table(f"pool {state['pool']['name']!r}: devices (measured by their agents)",
                             ["device", "state", "address", "GFLOP/s", "GiB", "GB/s", "busy"],
                             left=("device", "state", "address"))
        for d in state["devices"]:
            m = d["measured"]
            table.add_row(d["name"], d["state"], d["address"], f"{m['fp32_gflops']:.1f}", f"{m['memory_gib']:.1f}",
                          f"{m['memory_bandwidth_gbs']:.1f}",
                          f"{d['utilization']:.0%}" if d.get("utilization") is not None else "-")
        out.print(table)
        links = narrow_table("links (measured: TCP goodput, smallest round trip)", ["from", "to", "Mbit/s", "RTT ms"],
                             left=("from", "to"))
        for link in state["links"]:
            links.add_row(link["a"], link["b"], f"{link['bandwidth_mbit_s']:.1f}", f"{link['rtt_ms']:.2f}")
        out.print(links)

    @pool_app.command("export")
    def export(
        output: Path = typer.Argument(..., dir_okay=False, help="The cluster spec file to write (YAML)."),
        pool: str = typer.Option(DEFAULT_POOL, "--pool", help=POOL_HELP),
        key: str = KEY_OPTION,
        key_file: Path = KEY_FILE_OPTION,
    ) -> None:
        """Write the live pool as a cluster spec (`--cluster FILE` plans on it without the pool)."""
        import yaml

        with open_pool(pool, key, key_file) as client:
            spec, _ = client.cluster_spec()
            client.load(spec)  # checks that the spec loads (and that there is a device)
        write_text_atomic(output, yaml.safe_dump(spec, sort_keys=False))
        Console(stderr=True).print(f"{len(spec['devices'])} devices, {len(spec['links'])} measured links -> {output}")


def seconds_or_never(value: float | None) -> str:
    """A recovery time, or why there is none (the run ended before the interrupted iteration was redone)."""
    return "never (the run ended first)" if value is None else f"{value:.2f} s"


def _shown_host(host: str) -> str:
    return socket.gethostname() if host in ("0.0.0.0", "", "::") else host


def train_on_pool(client, key: bytes, model_spec, planner: str, steps: int, batch: int, seq: int | None, lr: float,
                  output: Path | None, heartbeat_timeout: float, command: str, console: Console) -> dict:
    """`train --pool`: plan on the live pool, run through the agents under elastic supervision (pipeline replay:
    a device whose agent disappears is recovered from, with no sample lost), report to the dashboard."""
    from edgepool.cli.runtime import _Bar
    from edgepool.costmodel import CostModel
    from edgepool.elastic.recovery import ElasticRun, Supervision, Training
    from edgepool.elastic.replan import replanner
    from edgepool.elastic.strategy import PipelineReplay
    from edgepool.pool.job import JobReporter
    from edgepool.pool.launcher import PoolLauncher
    from edgepool.profile import profile_model
    from edgepool.runtime.data import build_bundle
    from edgepool.simulator import simulate

    cluster, agents = client.live()
    profile = profile_model(build_bundle(model_spec), batch=1, seq=seq)
    cost_model = CostModel(optimizer="sgd")
    replan = replanner(planner, profile, cluster, cost_model, batch, require_feasible=True)
    plan = replan(list(cluster.devices))

    def timeline(p) -> list[dict]:
        return [e.model_dump(include={"device", "kind", "start", "end", "microbatch"})
                for e in simulate(p, cluster, cost_model, profile).timeline]

    reporter = JobReporter(client, "training", command, steps, work_per_unit=batch, timeline=timeline)
    reporter.plan(plan)
    launcher = PoolLauncher(agents, key, client.address, name=f"train@{socket.gethostname()}")
    run = ElasticRun(plan, model_spec, steps, replan, PipelineReplay(), training=Training(batch=batch, seq=seq, lr=lr),
                     supervision=Supervision(heartbeat_timeout_s=heartbeat_timeout), out_dir=output,
                     launcher=launcher, cluster=cluster)
    bar = _Bar(console, f"{plan.planner} on pool {client.address}")
    seen = {"events": 0, "plans": 1}

    def progress(done: int, total: int) -> None:
        bar(done, total)
        for ev in run.events[seen["events"]:]:
            if ev["kind"] == "dead":
                reporter.event("failure", ", ".join(ev["devices"]), f"lost {', '.join(ev['devices'])}: worker "
                                                                    "exited or its agent disappeared")
            elif ev["kind"] == "replan":
                reporter.event("replan", None, f"re-planned on {', '.join(ev['devices'])}; replaying from "
                                               f"iteration {ev['committed']} (pipeline replay)")
        seen["events"] = len(run.events)
        for new in run.plans[seen["plans"]:]:
            reporter.plan(new)
        seen["plans"] = len(run.plans)
        reporter.progress(done)

    run.progress = progress
    try:
        outcome = run.run()
    except BaseException:
        reporter.finish("failed")
        raise
    finally:
        bar.close()
    progress(steps, steps)
    reporter.finish("done")
    for r in outcome.recovery_times():
        after = seconds_or_never(r["time_to_interrupted_iteration_s"])
        reporter.event("recovered", r["device"], f"iteration {r['step']} done again {after} after losing {r['device']}")
    done = sorted(outcome.completions.values())
    throughput = (len(done) - 1) * batch / (done[-1] - done[0]) if len(done) > 1 and done[-1] > done[0] else None
    result = {"source": "measured", "mode": "replay", "pool": client.address,
              "samples_per_s": throughput, "samples_per_s_over": "first to last completed iteration, recoveries "
                                                                 "included",
              "plans": [p.devices for p in outcome.plans],
              "recoveries": outcome.recovery_times(), "samples": outcome.samples,
              "events": [{k: v for k, v in e.items() if k != "after"} for e in outcome.events],
              "where": outcome.where, "run_dir": str(outcome.out_dir)}
    write_text_atomic(outcome.out_dir / "result.json", json.dumps(result, indent=2, default=str))
    return result
