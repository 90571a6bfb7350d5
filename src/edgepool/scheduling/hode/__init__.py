"""Hode: a camera frame's moving regions split over unlike edge nodes by a learned load balancer.

`video` (frames from real images) -> `regions` (motion filter, split) -> `cnn` (the real recognizer) -> `env`
(the gymnasium environment and the split baselines) -> `scenario` (train, evaluate); `stage` and `worker` run
the CNN in one real process per node; `plots` draws.
"""
