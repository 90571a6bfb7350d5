"""Training planners: `dp`, `dp-proportional`, `gpipe`, `pipedream`, `hybrid` (Asteroid-style) and `dmp`."""
from edgepool.planners.base import Planner, get_planner, planner_names

__all__ = ["Planner", "get_planner", "planner_names"]
