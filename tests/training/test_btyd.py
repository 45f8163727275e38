"""The classical models' closed forms: the Pareto/NBD dropout integral both ways, and the fits."""

from __future__ import annotations

import numpy as np
import pytest

from training import btyd
from training.btyd import Rfm, fit_btyd


def customers(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, t_x, T) in days as a transaction log gives them, with the edge rows: one purchase
    (x = 0, t_x = 0), a purchase on the last day (t_x = T) and a first purchase today (T = 0)."""
    rng = np.random.default_rng(seed)
    T = rng.uniform(1, 700, n).round()
    x = rng.poisson(rng.gamma(0.6, 8.0, n)).astype(float)
    t_x = np.where(x > 0, (T * rng.uniform(0, 1, n)).round(), 0.0)
    edges = np.array([[0.0, 0.0, 300.0], [4.0, 200.0, 200.0], [0.0, 0.0, 0.0], [60.0, 30.0, 650.0]])
    return tuple(np.r_[column, edge] for column, edge in zip((x, t_x, T), edges.T, strict=True))


@pytest.mark.parametrize("seed", range(6))
def test_the_quadrature_agrees_with_the_closed_form(seed: int) -> None:
    """Over parameters from a fit's whole search space, including one rate far below the other
    (the closed form's slow corner), the two agree to 1e-7 in log (1e-8 of its size) wherever
    the closed form is finite; the quadrature is finite everywhere else too."""
    x, t_x, T = customers(300, seed)
    rng = np.random.default_rng(100 + seed)
    for _ in range(25):
        p = np.exp(rng.uniform([-4, -2, -4, -2], [3, 12, 5, 13]))
        closed = btyd._pn_log_dropout_closed_form(p, x, t_x, T)
        quadrature = btyd._pn_log_dropout_quadrature(p, x, t_x, T)
        assert np.array_equal(np.isfinite(quadrature), t_x < T), p  # the integral is empty where t_x = T
        finite = np.isfinite(closed)  # where scipy's series neither overflows nor fails
        np.testing.assert_allclose(quadrature[finite], closed[finite], rtol=1e-8, atol=1e-7, err_msg=str(p))


def test_the_likelihood_is_finite_and_picks_either_form_per_row() -> None:
    """CDNOW's parameters (every row closed form), a dropout rate about constant (every row
    integrated) and one between, whose rows go either way by their t_x."""
    x, t_x, T = customers(200, 7)
    for p, integrated in ((np.array([0.6, 80.0, 0.5, 60.0]), (0.0, 0.0)), (np.array([0.8, 31.0, 164.0, 1e5]), (1.0, 1.0)),
                          (np.array([0.6, 20.0, 5.3, 3000.0]), (0.2, 0.8))):
        share = np.mean(abs(p[1] - p[3]) / (max(p[1], p[3]) + t_x) >= 0.98)
        assert integrated[0] <= share <= integrated[1], (p, share)
        mixed = btyd._pn_log_dropout_integral(p, x, t_x, T)
        closed = btyd._pn_log_dropout_closed_form(p, x, t_x, T)
        np.testing.assert_allclose(mixed[np.isfinite(closed)], closed[np.isfinite(closed)], rtol=0, atol=1e-7)
        assert np.all(np.isfinite(btyd._pn_log_likelihood(p, x, t_x, T)))
        alive = btyd._pn_p_alive(p, x, t_x, T)
        assert np.all((alive > 0) & (alive <= 1))  # also no NaN


def test_pareto_nbd_recovers_the_parameters_it_was_simulated_with() -> None:
    """Customers drawn from a Pareto/NBD (gamma purchase and dropout rates): the fit lands near
    the truth, and a refit of the same customers is the same fit."""
    rng = np.random.default_rng(3)
    n, T = 4000, rng.uniform(200, 500, 4000).round()
    truth = {"r": 0.8, "alpha": 40.0, "s": 0.9, "beta": 120.0}
    rate = rng.gamma(truth["r"], 1 / truth["alpha"], n)
    dropout = rng.exponential(1 / rng.gamma(truth["s"], 1 / truth["beta"], n))
    x, t_x = np.zeros(n), np.zeros(n)
    for i in range(n):
        alive_until = min(dropout[i], T[i])
        times = np.cumsum(rng.exponential(1 / rate[i], 200))
        times = times[times <= alive_until]
        x[i], t_x[i] = len(times), times[-1] if len(times) else 0.0
    rfm = Rfm(x, t_x, T)
    fit = fit_btyd("pareto_nbd", rfm)
    r, alpha, s, beta = fit.params
    assert abs(r / alpha - truth["r"] / truth["alpha"]) < 0.15 * truth["r"] / truth["alpha"]  # mean purchase rate
    assert abs(s / beta - truth["s"] / truth["beta"]) < 0.3 * truth["s"] / truth["beta"]  # mean dropout rate
    assert 0.5 < r < 1.2 and 0.4 < s < 2.5
    assert fit_btyd("pareto_nbd", Rfm(x.copy(), t_x.copy(), T.copy())) is fit
