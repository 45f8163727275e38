"""Pure helpers of the scoring path."""

from __future__ import annotations

from serving.scoring import balanced_groups


def test_models_are_split_into_groups_of_similar_cost() -> None:
    cost = {"clv": 1.3, "counts": 1.0, "timing": 0.25, "top_value": 0.16, "sustainable": 0.15}
    groups = balanced_groups(cost, 2)
    assert sorted(name for group in groups for name in group) == sorted(cost)
    totals = [sum(cost[name] for name in group) for group in groups]
    assert totals == sorted(totals, reverse=True)  # the costliest group first
    assert max(totals) - min(totals) <= 0.3
    assert balanced_groups(cost, 1) == [sorted(cost, key=lambda n: -cost[n])]
    assert balanced_groups({"only": 1.0}, 4) == [["only"]]  # no empty groups
