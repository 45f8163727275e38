"""The customers the models are fitted and backtested on: everyone, or a seeded sample."""

from __future__ import annotations

import pandas as pd

from training.trainers import modelled_customers


def _profile(n: int) -> pd.DataFrame:
    return pd.DataFrame({"customer_id": [f"C{k:07d}" for k in range(n)][::-1], "signup_at": pd.Timestamp("2024-01-01", tz="UTC")})


def test_everyone_is_modelled_up_to_the_limit_or_without_one() -> None:
    profile = _profile(500)
    everyone = profile.sort_values("customer_id").reset_index(drop=True)
    assert modelled_customers(profile, 500, seed=1).equals(everyone)
    assert modelled_customers(profile, 0, seed=1).equals(everyone)


def test_a_larger_population_is_sampled_the_same_way_on_every_run() -> None:
    profile = _profile(5_000)
    sample = modelled_customers(profile, 1_000, seed=42)
    assert len(sample) == 1_000 and sample["customer_id"].is_unique
    assert set(sample["customer_id"]) <= set(profile["customer_id"])
    assert sample["customer_id"].is_monotonic_increasing  # training rows come in a fixed order
    assert sample.equals(modelled_customers(profile, 1_000, seed=42))
    assert not sample.equals(modelled_customers(profile, 1_000, seed=7))


def test_the_sample_does_not_depend_on_the_order_customers_are_listed_in() -> None:
    """DuckDB may list a view's customers in any order; the sample must not follow it."""
    profile = _profile(5_000)
    shuffled = profile.sample(frac=1.0, random_state=3)
    assert modelled_customers(shuffled, 1_000, seed=42).equals(modelled_customers(profile, 1_000, seed=42))
