"""Split computing between a device and an edge server (BottleFit, Entropic Student, an early filter, A3D).

options (what can run where) -> data/backbone (real images, the pretrained network) -> bottleneck/network
(learned bottlenecks) -> bitstream/codecs (real bytes) -> training -> pipeline (the two halves) ->
evaluate (the rate-accuracy table) -> planner (where to split) / latency (measured on the testbed) /
adaptive (per-frame choices, deep RL). `experiment` ties a task's steps to one artifacts folder.
"""
