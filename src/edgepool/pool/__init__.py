"""The pool: one agent per device, a coordinator that admits them with a shared key, measures the links between
them and keeps the live `Cluster`, a launcher that runs any job's workers through the agents, and a dashboard.

- `key`: the shared pool key (created once, user-only permissions) and the HMAC challenge-response.
- `channel`: length-prefixed JSON messages over TCP, and the authenticated handshake every connection starts with.
- `discovery`: mDNS/DNS-SD (zeroconf) announcement of the coordinator and browsing for it.
- `linkprobe`: bandwidth and round-trip time between two agents.
- `agent`: `edgepool agent`: measures its device, joins, heartbeats, starts the known worker modules a job names.
- `coordinator`: `edgepool pool up`: membership, heartbeats, link probes, the live cluster, job state, events.
- `client`: what a command (`train --pool`, `pool show`) uses to talk to the coordinator.
- `launcher`: `PoolLauncher`, the `Launcher` whose workers run on the agents' devices.
- `dashboard`: the live web page.

Nothing below this package imports it (DESIGN.md's layers): the runtimes take any launcher object.
"""
