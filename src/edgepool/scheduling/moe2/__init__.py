"""MoE²: LLM experts on edge servers; a gate weighs them and a monotonic search picks the subset under budgets.

`queries` (real categories and answers) -> `experts` (SmolLM2 variants scored for real, simulated costs) ->
`gate` -> `monotonic` (branch and bound over subsets) -> `scenario`; `plots` draws.
"""
