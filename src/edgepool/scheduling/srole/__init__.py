"""SROLE: per-node agents place arriving training jobs; a shield rewrites joint actions that collide.

`jobs` (job kinds planned per node by the cost model) -> `env` (the PettingZoo environment) -> `shield` ->
`marl` (parameter-shared PPO through an SB3 adapter) -> `scenario` (train, evaluate, baselines, plots).
"""
