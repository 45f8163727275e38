"""What every model is compared with, on the same window.

- ``btyd_predictions``: the classical buy-till-you-die models from PyMC-Marketing, MAP fit on
  the transactions up to the cutoff: BG/NBD for purchases, Gamma-Gamma for spend;
  ``BtydAhead`` fits them in a process of its own, started before the trainers ask.
- ``pareto_nbd_predictions``: Pareto/NBD x Gamma-Gamma, maximum likelihood (``training.btyd``),
  which beats BG/NBD on real logs such as CDNOW.
- ``RfmCells``: a simple heuristic: the average outcome of the customer's recency x frequency
  (x monetary) cell on the fit window.
- ``oracle_predictions``: on generated data, predictions from each customer's latent truth
  (rate, dropout, spend): the ceiling no model can pass.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from training.config import as_utc


def rfm_frame(transactions: pd.DataFrame, cutoff: datetime) -> pd.DataFrame:
    """frequency, recency, T (days) and mean repeat spend per customer, from purchases by ``cutoff``."""
    from pymc_marketing.clv.utils import rfm_summary

    cutoff = pd.Timestamp(as_utc(cutoff))
    buys = transactions[(transactions["timestamp"] <= cutoff) & (transactions["amount"] > 0)]
    days = buys.assign(day=buys["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None).dt.floor("D"))
    daily = days.groupby(["customer_id", "day"], as_index=False)["amount"].sum()
    return rfm_summary(
        daily, "customer_id", "day", "amount", observation_period_end=cutoff.tz_localize(None).floor("D")
    )


FAST_COMPILE_BELOW_CUSTOMERS = 5_000  # PyMC fits on fewer customers skip PyTensor's graph optimization


def btyd_predictions(
    transactions: pd.DataFrame,
    cutoff: datetime,
    horizons: Sequence[int],
    count_horizon: int,
    revenue_horizon: int,
    spend: bool = True,
) -> pd.DataFrame:
    """BG/NBD + Gamma-Gamma predictions for every customer with a purchase by ``cutoff``.

    Columns: ``p_purchase_{h}d`` and ``expected_purchases_{h}d`` for each horizon,
    ``expected_purchases`` (in ``count_horizon`` days), ``p_alive`` and, unless not
    ``spend`` (no Gamma-Gamma fit), ``expected_revenue`` (in ``revenue_horizon`` days).
    """
    import pytensor
    from pymc_marketing.clv import BetaGeoModel, GammaGammaModel

    rfm = rfm_frame(transactions, cutoff)
    data = rfm[["customer_id", "frequency", "recency", "T"]]
    # PyTensor's default mode optimizes and compiles each model's graph for seconds, which is
    # most of a fit on a small log; FAST_COMPILE skips that but evaluates each step more slowly,
    # which costs more than it saves on large ones. Both give the same fit.
    mode = "FAST_COMPILE" if len(rfm) < FAST_COMPILE_BELOW_CUSTOMERS else pytensor.config.mode
    with _quiet(), pytensor.config.change_flags(mode=mode):
        bgnbd = BetaGeoModel(data=data)
        bgnbd.fit(method="map", progressbar=False)
        out = pd.DataFrame({"customer_id": rfm["customer_id"].to_numpy()})
        for h in horizons:
            out[f"p_purchase_{h}d"] = 1.0 - _flat(bgnbd.expected_probability_no_purchase(t=h, data=data))
            out[f"expected_purchases_{h}d"] = _flat(bgnbd.expected_purchases(data=data, future_t=h))
        out["expected_purchases"] = _flat(bgnbd.expected_purchases(data=data, future_t=count_horizon))
        revenue_purchases = _flat(bgnbd.expected_purchases(data=data, future_t=revenue_horizon))
        out["p_alive"] = _flat(bgnbd.expected_probability_alive(data=data))
        if not spend:
            return out
        repeaters = rfm[rfm["frequency"] > 0][["customer_id", "frequency", "monetary_value"]]
        gamma_gamma = GammaGammaModel(data=repeaters)
        gamma_gamma.fit(method="map", progressbar=False)
        mean_spend = _flat(gamma_gamma.expected_customer_spend(data=rfm[["customer_id", "frequency", "monetary_value"]]))
    out["expected_revenue"] = revenue_purchases * mean_spend
    return out


class BtydAhead:
    """``btyd_predictions`` at cutoffs known in advance, fitted in a spawned process.

    Importing PyMC-Marketing and compiling each model's graph are seconds of single-threaded
    work; started before the trainers ask, they run beside the feature retrieval and the
    learnt models' fits instead of after them. The fits are the same as in the caller's
    process; Gamma-Gamma is fitted only at the cutoffs in ``spend_at``. ``close`` stops the
    process, fitting or not. As with any spawned process, a script that starts one needs an
    ``if __name__ == "__main__":`` guard (the process imports the script's module).
    """

    def __init__(self, transactions: pd.DataFrame, cutoffs: Sequence[datetime], horizons: Sequence[int],
                 count_horizon: int, revenue_horizon: int, spend_at: Collection[datetime] = ()) -> None:
        self._cutoffs = list(dict.fromkeys(cutoffs))  # in the order given: the first asked for first
        self._fitted: dict[datetime, pd.DataFrame | Exception] = {}
        # spawn, not fork: a forked child would inherit the locks of DuckDB's and LightGBM's threads
        context = multiprocessing.get_context("spawn")
        self._results = context.Queue()
        jobs = [(cutoff, cutoff in spend_at) for cutoff in self._cutoffs]
        log = transactions[["customer_id", "timestamp", "amount"]]
        self._process = context.Process(
            target=_fit_ahead, args=(log, jobs, tuple(horizons), count_horizon, revenue_horizon, self._results), daemon=True,
        )
        self._process.start()

    def predictions(self, cutoff: datetime) -> pd.DataFrame | None:
        """The predictions at ``cutoff``, waiting for them; None if it was not given or the
        process died (the caller then fits in its own)."""
        if cutoff not in self._cutoffs:
            return None
        while cutoff not in self._fitted:
            try:
                fitted_at, result = self._results.get(timeout=1.0)
            except queue.Empty:
                if not self._process.is_alive():
                    logging.getLogger(__name__).warning("the process fitting BG/NBD ahead died; fitting here")
                    return None
                continue
            self._fitted[fitted_at] = result
        result = self._fitted[cutoff]
        if isinstance(result, Exception):
            raise result
        return result

    def close(self) -> None:
        self._process.terminate()  # a fit nobody will ask for is not waited for
        self._process.join()


def _fit_ahead(log: pd.DataFrame, jobs: list[tuple[datetime, bool]], horizons: tuple[int, ...], count_horizon: int,
               revenue_horizon: int, results) -> None:
    """``BtydAhead``'s process: each (cutoff, spend) job's predictions, or its error, in order."""
    for cutoff, spend in jobs:
        try:
            results.put((cutoff, btyd_predictions(log, cutoff, horizons, count_horizon, revenue_horizon, spend)))
        except Exception as error:  # raised where it is asked for, as it would be in-process
            results.put((cutoff, error))


def pareto_nbd_predictions(
    transactions: pd.DataFrame,
    cutoff: datetime,
    horizons: Sequence[int],
    count_horizon: int,
    revenue_horizon: int,
) -> pd.DataFrame:
    """Pareto/NBD + Gamma-Gamma predictions for every customer with a purchase by ``cutoff``,
    in the columns of ``btyd_predictions``."""
    from training.btyd import Rfm, fit_btyd, fit_gamma_gamma
    from training.structural import customer_summary

    cutoff = pd.Timestamp(as_utc(cutoff))
    bought = transactions[(transactions["timestamp"] <= cutoff) & (transactions["amount"] > 0)]
    summary = customer_summary(bought, cutoff)
    rfm = Rfm(*(summary[c].to_numpy(float) for c in ("frequency", "recency", "T")))
    fit = fit_btyd("pareto_nbd", rfm)
    out = pd.DataFrame({"customer_id": summary["customer_id"].to_numpy()})
    for h in horizons:
        out[f"p_purchase_{h}d"] = 1.0 - fit.p_no_purchase(rfm, h)
        out[f"expected_purchases_{h}d"] = fit.expected(rfm, h)
    out["expected_purchases"] = fit.expected(rfm, count_horizon)
    out["p_alive"] = fit.p_alive(rfm)
    x, mean_spend = summary["frequency"].to_numpy(float), summary["monetary_value"].to_numpy(float)
    gamma_gamma = fit_gamma_gamma(x, mean_spend)
    spend = summary["mean_spend_all"].to_numpy(float) if gamma_gamma is None else gamma_gamma.expected_spend(x, mean_spend)
    out["expected_revenue"] = fit.expected(rfm, revenue_horizon) * spend
    return out


def _flat(values) -> np.ndarray:
    return np.asarray(values).reshape(-1)


class _quiet:
    """Silence PyMC's sampling chatter and warnings during MAP fits."""

    def __enter__(self):
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        self._level = logging.getLogger("pymc").level
        logging.getLogger("pymc").setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        logging.getLogger("pymc").setLevel(self._level)
        return self._warnings.__exit__(*exc)


@dataclass
class RfmCells:
    """Average outcome per recency x frequency (x monetary) quintile cell of the fit window."""

    use_monetary: bool = False
    edges_: dict[str, np.ndarray] = field(default_factory=dict)
    means_: dict[tuple, float] = field(default_factory=dict)
    overall_: float = 0.0

    def _cells(self, features: pd.DataFrame) -> list[tuple]:
        recency = features["days_since_last_purchase"].fillna(10_000).to_numpy()
        frequency = features["purchase_days_365d"].fillna(0).to_numpy()
        parts = [np.digitize(recency, self.edges_["r"]), np.digitize(frequency, self.edges_["f"])]
        if self.use_monetary:
            parts.append(np.digitize(features["revenue_365d"].fillna(0).to_numpy(), self.edges_["m"]))
        return list(zip(*parts, strict=True))

    def fit(self, features: pd.DataFrame, outcome: np.ndarray) -> RfmCells:
        quantiles = [0.2, 0.4, 0.6, 0.8]
        self.edges_ = {
            "r": np.unique(np.quantile(features["days_since_last_purchase"].fillna(10_000), quantiles)),
            "f": np.unique(np.quantile(features["purchase_days_365d"].fillna(0), quantiles)),
            "m": np.unique(np.quantile(features["revenue_365d"].fillna(0), quantiles)),
        }
        frame = pd.DataFrame({"cell": self._cells(features), "y": np.asarray(outcome, dtype=float)})
        self.means_ = frame.groupby("cell")["y"].mean().to_dict()
        self.overall_ = float(np.mean(outcome))
        return self

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        return np.array([self.means_.get(cell, self.overall_) for cell in self._cells(features)])


def oracle_predictions(
    truth: pd.DataFrame,
    cutoff: datetime,
    horizons: Sequence[int],
    count_horizon: int,
    revenue_horizon: int,
    refund_share: float = 0.03,
) -> pd.DataFrame:
    """Predictions from the latent truth of generated data (rate, dropout, spend).

    Purchases are a seasonal Poisson process until dropout, so the expected number in
    (c, c + h] is rate x the integral of seasonality over the alive part of the window.
    """
    from training.data.generate import seasonality

    cutoff = pd.Timestamp(as_utc(cutoff))
    longest = max(*horizons, count_horizon, revenue_horizon)
    day_of_year = np.array(
        [(cutoff + timedelta(days=float(d))).dayofyear for d in np.arange(0, longest + 1)], dtype=float
    )
    cumulative = np.concatenate([[0.0], np.cumsum(seasonality(day_of_year[:-1]))])
    alive_days = ((truth["dropout_at"] - cutoff).dt.total_seconds() / 86_400).clip(lower=0).to_numpy()
    rate = truth["purchase_rate_per_day"].to_numpy() * truth["is_buyer"].to_numpy()

    def intensity(h: int) -> np.ndarray:
        until = np.minimum(alive_days, h)
        whole = np.floor(until).astype(int)
        frac = until - whole
        return rate * (cumulative[whole] + frac * (cumulative[np.minimum(whole + 1, longest)] - cumulative[whole]))

    out = pd.DataFrame({"customer_id": truth["customer_id"].to_numpy()})
    for h in horizons:
        out[f"p_purchase_{h}d"] = 1.0 - np.exp(-intensity(h))
    out["expected_purchases"] = intensity(count_horizon)
    out["expected_revenue"] = intensity(revenue_horizon) * truth["expected_order_value"].to_numpy() * (1 - refund_share)
    return out
