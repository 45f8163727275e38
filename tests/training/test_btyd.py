"""The closed forms and the draws of the BTYD models agree with each other."""

from __future__ import annotations

import numpy as np
import pytest

from training.btyd import BtydFit, Rfm


@pytest.mark.parametrize("model", ["bg_nbd", "pareto_nbd"])
def test_posterior_draws_average_to_the_closed_form(model: str) -> None:
    """Heavy buyers included (700 repeat days in two years): the draws are not capped."""
    params = {"bg_nbd": np.array([0.25, 33.5, 0.72, 2.16]), "pareto_nbd": np.array([0.6, 81.0, 0.52, 62.0])}[model]
    fit = BtydFit(model, params)
    rfm = Rfm(x=np.array([0.0, 3.0, 700.0]), t_x=np.array([0.0, 200.0, 725.0]), T=np.array([30.0, 365.0, 730.0]))
    draws = fit.draws(rfm, 365, 4_000, np.random.default_rng(1), np.ones(3))
    np.testing.assert_allclose(draws.mean(axis=1), fit.expected(rfm, 365), rtol=0.06, atol=0.02)
    no_purchase = (draws == 0).mean(axis=1)
    np.testing.assert_allclose(no_purchase, fit.p_no_purchase(rfm, 365), atol=0.03)
