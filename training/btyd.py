"""The classical buy-till-you-die models as maximum-likelihood fits with closed forms.

BG/NBD (Fader, Hardie & Lee 2005) and Pareto/NBD (Schmittlein, Morrison & Colombo 1987) for
purchase counts, Gamma-Gamma for spend. PyMC-Marketing fits the same models by MAP with
priors; its fits take 10-45 s on 23k customers (PyTensor compiles each model), too slow for
the inner validation windows of ``training.structural``, which fit several models at several
cutoffs. These fits take under a second (distinct (x, t_x, T) rows, weighted; the last 32
fits are kept in memory, as several steps of a run ask for the same one). The BG/NBD
baseline every model is compared with stays PyMC-Marketing's (``training.baselines``).

Units are days: ``x`` repeat purchase days, ``t_x`` the day of the last one and ``T`` the
age, both counted from the first purchase.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import gammaln, hyp2f1, logsumexp

MODELS = ("pareto_nbd", "bg_nbd")
LABELS = {"pareto_nbd": "Pareto/NBD", "bg_nbd": "BG/NBD"}  # as a reader knows them
# Starting points (r, alpha, s|a, beta|b) in days; alpha and beta are rescaled by the median age.
_START = {"pareto_nbd": np.array([0.5, 50.0, 0.5, 50.0]), "bg_nbd": np.array([0.3, 30.0, 0.8, 2.5])}
_SCALED = {"pareto_nbd": (1, 3), "bg_nbd": (1,)}


@dataclass(frozen=True)
class Rfm:
    """Per customer: repeat purchase days, day of the last one and age (days from the first)."""

    x: np.ndarray
    t_x: np.ndarray
    T: np.ndarray


def _bg_log_likelihood(p: np.ndarray, x, t_x, T) -> np.ndarray:
    r, alpha, a, b = p
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(x > 0, np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) - (r + x) * np.log(alpha + t_x), -np.inf)
    return a1 + a2 + np.logaddexp(a3, a4)


def _bg_p_alive(p: np.ndarray, x, t_x, T) -> np.ndarray:
    r, alpha, a, b = p
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        odds = np.where(x > 0, a / np.maximum(b + x - 1, 1e-12) * ((alpha + T) / (alpha + t_x)) ** (r + x), 0.0)
    return 1.0 / (1.0 + odds)


def _bg_expected(p: np.ndarray, x, t_x, T, t: float) -> np.ndarray:
    r, alpha, a, b = p
    z = t / (alpha + T + t)
    share = 1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp2f1(r + x, b + x, a + b + x - 1, z)
    return (a + b + x - 1) / (a - 1) * share * _bg_p_alive(p, x, t_x, T)


def _pn_log_dropout_integral(p: np.ndarray, x, t_x, T) -> np.ndarray:
    """log of the integral over the dropout time tau in (t_x, T] of (alpha + tau)^-(r + x)
    (beta + tau)^-(s + 1): Pareto/NBD's A0 term divided by (r + s + x).

    The closed form needs the Gauss hypergeometric function at z = |alpha - beta| / (max + t_x),
    whose series scipy sums in about a microsecond a row while z < 0.9 but in up to 100 us as z
    nears 1 (one rate far below the other: where Pareto/NBD's dropout tends to a constant rate),
    where it may also overflow. There it is integrated numerically (``_pn_log_dropout_quadrature``,
    about 6 us a row)."""
    x, t_x, T = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (x, t_x, T)))
    r, alpha, s, beta = p
    closed = abs(alpha - beta) / (max(alpha, beta) + t_x) < 0.98  # about where the two cost the same
    out = np.empty(x.shape)
    out[closed] = _pn_log_dropout_closed_form(p, x[closed], t_x[closed], T[closed])
    out[~closed] = _pn_log_dropout_quadrature(p, x[~closed], t_x[~closed], T[~closed])
    return out


def _pn_log_dropout_closed_form(p: np.ndarray, x, t_x, T) -> np.ndarray:
    r, alpha, s, beta = p
    low, high, u = (alpha, beta, r + x) if alpha < beta else (beta, alpha, s + 1)
    gap, rsx = high - low, r + s + x
    f1 = hyp2f1(rsx, u, rsx + 1.0, gap / (high + t_x))
    f2 = hyp2f1(rsx, u, rsx + 1.0, gap / (high + T))
    q1, q2 = high + t_x, high + T
    with np.errstate(divide="ignore", invalid="ignore"):
        value = logsumexp(
            [np.log(f1) + rsx * np.log(q2), np.log(f2) + rsx * np.log(q1)], axis=0, b=[np.ones_like(x), -np.ones_like(x)]
        )
    return value - rsx * np.log(q1 * q2) - np.log(rsx)


def _tanh_sinh_nodes(step: float = 0.12, half: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tanh-sinh quadrature on [0, 1]: each node's distance from 0 and from 1 (both exact near
    their end) and its weight. Its error falls double-exponentially even with a singularity at
    an end, which is where ``_pn_log_dropout_integral`` puts its hard part."""
    t = step * np.arange(-half, half + 1)
    v = np.pi / 2 * np.sinh(t)
    half_gap = np.exp(-np.abs(v)) / (2 * np.cosh(v))  # (1 - |u|) / 2 for u = tanh(v)
    from_zero = np.where(t < 0, half_gap, 1 - half_gap)
    from_one = np.where(t < 0, 1 - half_gap, half_gap)
    weight = step * np.pi / 4 * np.cosh(t) / np.cosh(v) ** 2
    return from_zero[:, None], from_one[:, None], weight[:, None]


_NODES = _tanh_sinh_nodes()


def _pn_log_dropout_quadrature(p: np.ndarray, x, t_x, T) -> np.ndarray:
    """``_pn_log_dropout_integral`` by tanh-sinh quadrature, after the change of variable that
    makes a single power (gamma + tau)^-m exact (gamma and m matched to the integrand's
    log-derivatives at t_x): what is left is smooth inside the interval, and 61 nodes agree with
    the closed form to within 1e-8 (``tests/training/test_btyd.py``)."""
    r, alpha, s, beta = p
    a, b = r + x, s + 1.0
    slope = a / (alpha + t_x) + b / (beta + t_x)
    curvature = a / (alpha + t_x) ** 2 + b / (beta + t_x) ** 2
    offset, m = slope / curvature, slope**2 / curvature  # gamma + t_x, and the power
    k = 1.0 - m
    flat = np.abs(k) < 1e-9  # the power is 1: the new variable is log(gamma + tau)
    k_safe = np.where(flat, 1.0, k)
    span = np.log1p((T - t_x) / offset)  # log((gamma + T) / (gamma + t_x))
    with np.errstate(divide="ignore"):
        # w = ((gamma + tau)^k - (gamma + t_x)^k) / (k (gamma + t_x)^k) runs over [0, width].
        width = np.where(flat, span, np.expm1(k * span) / k_safe)
        from_zero, from_one, weight = _NODES
        w, to_end = from_zero * width, from_one * width
        # For k < 0 the map is singular just past tau = T; measured from that end it stays exact.
        inner = np.where(k < 0, np.exp(k * span) - k * to_end, 1.0 + k * w)
        log_ratio = np.where(flat, w, np.log(inner) / k_safe)  # log((gamma + tau) / (gamma + t_x))
        tau = np.minimum(t_x + offset * np.expm1(log_ratio), T)
        log_f = -a * np.log(alpha + tau) - b * np.log(beta + tau) + m * log_ratio + np.log(offset)
        return logsumexp(log_f, axis=0, b=weight * np.ones_like(log_f)) + np.log(width)


def _pn_log_likelihood(p: np.ndarray, x, t_x, T) -> np.ndarray:
    r, alpha, s, beta = p
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha) + s * np.log(beta)
    a2 = np.logaddexp(-(r + x) * np.log(alpha + T) - s * np.log(beta + T), np.log(s) + _pn_log_dropout_integral(p, x, t_x, T))
    return a1 + a2


def _pn_p_alive(p: np.ndarray, x, t_x, T) -> np.ndarray:
    r, alpha, s, beta = p
    with np.errstate(over="ignore"):
        log_odds = np.log(s) + (r + x) * np.log(alpha + T) + s * np.log(beta + T) + _pn_log_dropout_integral(p, x, t_x, T)
        return 1.0 / (1.0 + np.exp(log_odds))


def _pn_expected(p: np.ndarray, x, t_x, T, t: float) -> np.ndarray:
    r, alpha, s, beta = p
    s = s if abs(s - 1) > 1e-6 else 1 + 1e-6
    rate = (r + x) / (alpha + T)  # E[lambda | alive]
    lifetime = (beta + T) / (s - 1) * (1 - ((beta + T) / (beta + T + t)) ** (s - 1))  # E[min(tau, t) | alive]
    return _pn_p_alive(p, x, t_x, T) * rate * lifetime


_FORMS = {
    "pareto_nbd": (_pn_log_likelihood, _pn_p_alive, _pn_expected),
    "bg_nbd": (_bg_log_likelihood, _bg_p_alive, _bg_expected),
}


@dataclass(frozen=True)
class BtydFit:
    """A fitted count model: ``params`` are (r, alpha, s, beta) or (r, alpha, a, b), in days."""

    model: str
    params: np.ndarray

    def expected(self, rfm: Rfm, t: float) -> np.ndarray:
        """Expected purchase days in (T, T + t]."""
        return _FORMS[self.model][2](self.params, rfm.x, rfm.t_x, rfm.T, t)

    def log_likelihood(self, rfm: Rfm) -> np.ndarray:
        """Each customer's log-likelihood of their (x, t_x, T)."""
        return _FORMS[self.model][0](self.params, rfm.x, rfm.t_x, rfm.T)

    def p_alive(self, rfm: Rfm) -> np.ndarray:
        return _FORMS[self.model][1](self.params, rfm.x, rfm.t_x, rfm.T)

    def p_no_purchase(self, rfm: Rfm, t: float) -> np.ndarray:
        """P(no purchase in (T, T + t]) = L(x, t_x, T + t) / L(x, t_x, T), exact for both models."""
        log_likelihood = _FORMS[self.model][0]
        ratio = log_likelihood(self.params, rfm.x, rfm.t_x, rfm.T + t) - log_likelihood(self.params, rfm.x, rfm.t_x, rfm.T)
        return np.exp(np.minimum(ratio, 0.0))

def fit_btyd(model: str, rfm: Rfm) -> BtydFit:
    """Maximum-likelihood fit (Nelder-Mead, then L-BFGS-B from there) over the distinct
    (x, t_x, T) rows weighted by how many customers share them."""
    keys, weights = np.unique(np.c_[rfm.x, rfm.t_x, rfm.T].astype(float), axis=0, return_counts=True)
    scale = float(np.median(rfm.T)) if np.median(rfm.T) > 0 else 1.0
    return _fit_distinct(model, keys.tobytes(), weights.astype(np.int64).tobytes(), scale)


@functools.lru_cache(maxsize=32)  # a training run asks for the same cutoff's fit several times
def _fit_distinct(model: str, keys_bytes: bytes, weights_bytes: bytes, scale: float) -> BtydFit:
    log_likelihood = _FORMS[model][0]
    x, t_x, T = np.frombuffer(keys_bytes).reshape(-1, 3).T
    weights = np.frombuffer(weights_bytes, dtype=np.int64)
    scaled = list(_SCALED[model])

    def params_of(log_params: np.ndarray) -> np.ndarray:
        params = np.exp(log_params)
        params[scaled] *= scale
        return params

    def loss(log_params: np.ndarray) -> float:
        with np.errstate(all="ignore"):  # the search strays where parameters overflow: a non-finite loss
            values = log_likelihood(params_of(log_params), x, t_x, T)
        return -(weights * values).sum() / weights.sum() if np.all(np.isfinite(values)) else 1e20

    start = _START[model].copy()
    start[scaled] /= scale
    best = minimize(loss, np.log(start), method="Nelder-Mead", options={"maxiter": 4000})
    polished = minimize(loss, best.x, method="L-BFGS-B")
    if polished.fun <= best.fun:
        best = polished
    params = params_of(best.x)
    params.setflags(write=False)  # the fit is shared by every caller with these rows
    return BtydFit(model, params)


@dataclass(frozen=True)
class GammaGamma:
    """Spend per purchase (Fader, Hardie & Lee 2005): ``p, q, v``."""

    p: float
    q: float
    v: float

    def expected_spend(self, x: np.ndarray, mean_spend: np.ndarray) -> np.ndarray:
        known = (x > 0) & (mean_spend > 0)
        return np.where(known, self.p * (self.v + x * mean_spend) / (self.p * x + self.q - 1), self.p * self.v / (self.q - 1))

def fit_gamma_gamma(x: np.ndarray, mean_spend: np.ndarray) -> GammaGamma | None:
    """Fit on repeat buyers; None when spend does not vary (every purchase the same amount) or
    the fit has no finite mean (q <= 1)."""
    keep = (x > 0) & (mean_spend > 0)
    x, m = x[keep].astype(float), mean_spend[keep].astype(float)
    if len(x) < 20 or np.std(m) / max(np.mean(m), 1e-12) < 1e-3:
        return None

    def loss(log_params: np.ndarray) -> float:
        p, q, v = np.exp(log_params)
        values = (
            gammaln(p * x + q) - gammaln(p * x) - gammaln(q) + q * np.log(v) + (p * x - 1) * np.log(m)
            + p * x * np.log(x) - (p * x + q) * np.log(x * m + v)
        )
        return -values.mean() if np.all(np.isfinite(values)) else 1e20

    first = minimize(loss, np.log([2.0, 3.0, np.mean(m)]), method="Nelder-Mead", options={"maxiter": 4000})
    p, q, v = np.exp(minimize(loss, first.x, method="L-BFGS-B").x)
    if q <= 1 or not np.isfinite([p, q, v]).all():
        return None
    return GammaGamma(float(p), float(q), float(v))
