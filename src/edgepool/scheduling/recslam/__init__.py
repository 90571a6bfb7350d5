"""RecSLAM: robots' laser scans fused on edge servers, merged on the cloud; who goes to which server.

`scans` (world, scans, real ICP fusion) -> `site` (robots, servers, Wi-Fi rates, per-robot costs) ->
`assignment` (the integer program, greedy, baselines, the simulated round) -> `scenario`; `plots` draws.
"""
