"""Graph neural networks at the edge.

Fograph's distributed GNN inference over fog nodes (`data`, `models`, `partition`, `compression`, `fog`)
and the cost-optimal placement of a graph's vertices over a device / edge / cloud hierarchy by graph cuts
(`layout_cost`, `graphcut`, `layout_baselines`, `layout`).
"""
