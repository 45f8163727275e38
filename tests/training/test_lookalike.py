"""Lookalikes on small synthetic frames: the held-out split, signal, expected precision, scores."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from training.models import (
    ActivityLookalikeModel,
    LookalikeModel,
    audience_table,
    customer_uniform,
    hypergeom_sf,
    rank_knots,
)

N = 4_000


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """Customers as the generator draws them (its seed 42, first chunk), with a few behaviours:
    ``affinity`` is latent; ``signal_a`` and ``signal_b`` see it through noise."""
    from training.data.generate import GenerationSpec, generate_chunk

    customers = generate_chunk(GenerationSpec(customers=N, seed=42, start=date(2024, 1, 1), days=365), 0, 0, N)["customers"]
    profile = customers.select(["customer_id", "age_band", "region", "income_band"]).to_pandas()
    rng = np.random.default_rng(2024)
    affinity = rng.normal(size=N)
    return profile.assign(
        affinity=affinity,
        signal_a=affinity + rng.normal(scale=0.5, size=N),
        signal_b=affinity + rng.normal(scale=0.8, size=N),
        noise=rng.normal(size=N),
        purchase_days_365d=rng.poisson(3, size=N).astype(float),
        sessions_90d=rng.poisson(10, size=N).astype(float),
    )


def _fit(frame: pd.DataFrame, seed_ids: set[str]) -> LookalikeModel:
    return LookalikeModel(name="test", excluded_features=("affinity",), threads=1).fit(frame, seed_ids)


def _real_seed(frame: pd.DataFrame) -> set[str]:
    return set(frame.loc[frame["affinity"] > frame["affinity"].quantile(0.9), "customer_id"])


def _random_seed(frame: pd.DataFrame, size: int, seed: int) -> set[str]:
    return set(frame["customer_id"].sample(size, random_state=seed))


def test_the_heldout_split_does_not_repeat_the_generators_draws(frame) -> None:
    """With the generator's seed the old split (``default_rng(42).random(n) < 0.2`` over rows in
    id order) held out exactly the youngest seed members: the generator draws ages from the same
    stream. Each age band must now lose about a fifth of its seed members."""
    seed_ids = _random_seed(frame, 1_500, seed=3)
    model = _fit(frame, seed_ids)
    seed = frame[frame["customer_id"].isin(seed_ids)]
    heldout_share = seed.groupby("age_band")["customer_id"].agg(lambda ids: ids.isin(model.heldout_ids_).mean())
    assert heldout_share.between(0.1, 0.3).all(), heldout_share.to_dict()
    draws = customer_uniform(frame["customer_id"].to_numpy(), "lookalike-holdout", 42)
    shuffled = frame.sample(frac=1.0, random_state=1)
    np.testing.assert_array_equal(  # a customer's draw does not depend on the row order
        customer_uniform(shuffled["customer_id"].to_numpy(), "lookalike-holdout", 42), draws[shuffled.index.to_numpy()]
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_random_seed_has_no_signal_and_claims_no_precision(frame, seed: int) -> None:
    model = _fit(frame, _random_seed(frame, 50, seed))
    report = model.audience_report(frame, (1, 5, 10)).set_index("audience_percent")
    assert not report["signal"].any(), report
    assert report["expected_precision"].isna().all()
    assert (report["p_value"] > 0.01).all()
    np.testing.assert_allclose(report["random_precision"], 50 / N)


def test_a_seed_with_signal_gets_a_measured_precision_and_interval(frame) -> None:
    model = _fit(frame, _real_seed(frame))
    report = model.audience_report(frame, (2, 5, 10, 30)).set_index("audience_percent")
    assert report["signal"].all() and (report["p_value"] < 1e-6).all()
    assert (report["heldout_seed_recall"] > 2 * report["random_recall"]).all()
    precision, low, high = report["expected_precision"], report["expected_precision_low"], report["expected_precision_high"]
    assert ((low <= precision) & (precision <= high) & (high <= 1)).all()
    assert (precision > report["random_precision"]).all()
    assert precision[30] < 0.4  # an audience three times the seed's share cannot be mostly like it


def test_scores_order_like_the_similarity_and_do_not_saturate(frame) -> None:
    model = _fit(frame, _real_seed(frame))
    candidates = frame[~frame["customer_id"].isin(model.seed_ids_)]
    similarity, scores = model.similarity(candidates), model.score(candidates)
    assert ((scores > 0) & (scores < 1)).all()
    order = np.argsort(similarity, kind="stable")
    assert (np.diff(scores[order]) >= 0).all()
    assert np.array_equal(np.unique(similarity, return_inverse=True)[1], np.unique(scores, return_inverse=True)[1])
    top = np.sort(scores)[-int(len(scores) * 0.05):]
    assert len(np.unique(top)) >= 0.9 * len(top)  # the old g / c put most of the top at exactly 1.0
    assert (top == top.max()).sum() <= 2


def test_expected_precision_on_perfect_and_random_rankings() -> None:
    n, held = 10_000, 200
    heldout = np.zeros(n, dtype=bool)
    heldout[:held] = True
    perfect = audience_table(-np.arange(n, dtype=float), heldout, 0.1, (5, 20)).set_index("audience_percent")
    np.testing.assert_allclose(perfect["expected_precision"], [1.0, 0.5], atol=1e-3)  # min(1, share / audience)
    rng = np.random.default_rng(0)
    shuffled = pd.concat([audience_table(rng.random(n), heldout, 0.1, (5, 20)) for _ in range(300)])
    assert shuffled["signal"].mean() <= 0.02  # random rankings: about SIGNAL_ALPHA of them, by chance
    assert shuffled["heldout_seed_recall"].mean() == pytest.approx(shuffled["random_recall"].mean(), abs=0.01)


def test_hypergeometric_tail() -> None:
    stats = pytest.importorskip("scipy.stats")
    for hits, population, marked, drawn in [(1, 10, 1, 1), (3, 1_000, 10, 50), (0, 50, 5, 5), (40, 20_000, 300, 900)]:
        expected = stats.hypergeom.sf(hits - 1, population, marked, drawn)
        assert hypergeom_sf(hits, population, marked, drawn) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_rank_knots_map_similarity_into_the_open_interval_in_order() -> None:
    reference = np.concatenate([np.full(500, 0.2), np.random.default_rng(1).random(1_500)])
    xs, ys = rank_knots(reference, size=101)
    assert (np.diff(xs) > 0).all() and (np.diff(ys) > 0).all() and xs[0] == ys[0] == 0 and xs[-1] == ys[-1] == 1
    probe = np.array([1e-9, 0.2, 0.5, 0.999999, 1 - 1e-12])
    mapped = np.interp(probe, xs, ys)
    assert (np.diff(mapped) > 0).all() and (mapped < 1).all()


def test_the_activity_baseline_ranks_like_the_heuristic_and_explains_itself(frame) -> None:
    model = _fit(frame, _real_seed(frame))
    baseline = ActivityLookalikeModel(name="test").fit(frame, model.seed_ids_, model.heldout_ids_)
    activity = frame["purchase_days_365d"] + 1e-3 * frame["sessions_90d"]
    order = np.argsort(-baseline.similarity(frame), kind="stable")
    assert np.array_equal(order, np.argsort(-activity.to_numpy(), kind="stable"))
    matrix = baseline.encoder_.matrix(frame)
    np.testing.assert_allclose(baseline.contributions(matrix).sum(axis=1), activity)
    scores = baseline.score(frame, matrix)
    assert ((scores > 0) & (scores < 1)).all()
    assert set(baseline.audience_report(frame, (5,)).columns) == set(model.audience_report(frame, (5,)).columns)
