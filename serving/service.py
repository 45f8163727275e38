"""The BentoML endpoint: indicators, reasons and provenance for customer profiles.

Start with ``make serve`` (after ``make train``). Configuration comes from the environment
(``training.config.config_from_env``). Every route but health and readiness needs an API key
(``serving.access``); bodies, errors and the OpenAPI document are ``serving.guard``'s.
The service loads the ``champion`` of every model and checks the online store at start, and
refuses to start with a clear message when either is missing.
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import bentoml
import pandas as pd
from fastapi import FastAPI, HTTPException

from serving import access, guard
from serving.consent import may_score, policy_for
from serving.events import DataBusy, EventSink, EventsRejected, OnlineWriteFailed
from serving.schemas import (
    ErrorResponse,
    EventsRequest,
    EventsResponse,
    ExplainRequest,
    ExplainResponse,
    FeaturePayload,
    LookalikeRequest,
    LookalikeResponse,
    ProfileRequest,
    ProfileResponse,
    ScoreRequest,
    ScoreResponse,
)
from serving.scoring import Champions, lookalike_audience_response, value_tiers_of
from training import catalogue
from training.config import as_utc, config_from_env
from training.data import journal
from training.dataset import features_at
from training.explain import top_reasons
from training.features import store as feature_store
from training.features.snapshots import data_end, midnight_after


def _frame(values: dict[str, list]) -> pd.DataFrame:
    """Objects as read (no dtype inference, a millisecond of a one-customer call); the encoder
    turns them into the models' floats exactly as it does Feast's offline frames."""
    return pd.DataFrame(values, dtype=object)


# A request's as_of may lie this far past the later of now and the features' time: beyond,
# recency extrapolates past anything the models saw.
MAX_AHEAD = timedelta(days=365)
# A /profile call of this many customers with reasons is a bulk call (``bulk_lane``).
BULK_CUSTOMERS = 20
TYPICAL_QUANTILES = (0.001, 0.999)  # /score flags values outside the middle 99.8% of stored customers
JSON_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 403, 422, 503)}
EVENTS_RETRY_SECONDS = "2"

# The routes: a FastAPI app BentoML mounts and serves (workers, metrics, access log). Its
# OpenAPI document is the one served (``serving.guard``).
api = FastAPI(
    title="customer indicators",
    version="1",
    description="Predictive indicators, their reasons and lookalike audiences for customer profiles. "
    "Every route but /livez, /healthz and /readyz needs `Authorization: Bearer KEY`.",
    docs_url=None,
    redoc_url=None,
    default_response_class=guard.FiniteJSONResponse,
)
guard.install(api)


@bentoml.service(traffic={"timeout": 60})
@bentoml.asgi_app(api, path="/")
class CustomerIndicators:
    def __init__(self) -> None:
        access.check_extra_key(os.environ.get(access.ENV_KEY))
        self.config = config_from_env()
        online = self.config.paths.feast / "online_store.db"
        if self.config.feast.online_store == "sqlite" and not online.exists():
            raise RuntimeError(f"no online store at {online}: run `make train` (or `indicators features`) first")
        self.unknown_consent = policy_for(self.config.paths, self.config.scoring.unknown_consent)
        self.champions = Champions.load(self.config)  # raises ChampionMissing with the fix in its message
        self.store = feature_store.feature_store(self.config)
        self.reader = feature_store.OnlineReader.of(self.store)
        # One read at start: a store without the views' tables fails here, with what to run.
        self.reader.read(["startup-probe"], datetime.now(UTC))
        self._features_lock = threading.Lock()
        self._features_stamp: tuple[int, int] | None = None
        self._features_time: datetime | None = None
        self._latest_stamp()  # the features' time; without features or a raw log this stops the start
        self._population: pd.DataFrame | None = None
        self._population_stamp: tuple[int, int] | None = None
        self._population_lock = threading.Lock()
        self._typical: dict[str, tuple[float, float]] | None = None
        self._events: EventSink | None = None  # opened by the first events call
        self._events_lock = threading.Lock()
        self._set_value_tiers()
        # What was loaded lives as long as the service: out of the collector's sight, a full
        # collection no longer walks the models and the registry in the middle of a request.
        gc.collect()
        gc.freeze()

    def _set_value_tiers(self) -> None:
        """Value-tier thresholds: those of the latest batch scores, so both agree; else computed."""
        scores = self.config.paths.predictions / "scores.parquet"
        if scores.exists():
            revenue = pd.read_parquet(scores, columns=["expected_revenue"])["expected_revenue"].to_numpy()
            self.champions.value_tiers = value_tiers_of(revenue)
        else:
            self.champions.calibrate_tiers(self._latest_features())

    @property
    def features_time(self) -> datetime:
        """The time the stored features are current to: the default as_of, as `indicators score`
        uses; midnight after the latest event accepted since, if later. Read again when the
        features are rewritten (one stat a request) and from the journal (one indexed query)."""
        self._latest_stamp()
        latest = self.event_sink.latest_time() if self._events is not None or journal.journal_file(self.config.paths).exists() else None
        return self._features_time if latest is None else max(self._features_time, midnight_after(latest))

    @property
    def event_sink(self) -> EventSink:
        with self._events_lock:
            if self._events is None:
                self._events = EventSink(self.config, self.store)
            return self._events

    def _latest_stamp(self) -> tuple[int, int]:
        profiles = self.config.paths.features / "customer_profile.parquet"
        stat = profiles.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._features_stamp:
            with self._features_lock:
                if stamp != self._features_stamp:
                    self._features_time = data_end(self.config.paths)
                    self._features_stamp = stamp
        return stamp

    def _moment(self, as_of: datetime | None) -> datetime:
        """The moment recency is measured to: ``as_of`` if it lies in the served range, else a 422."""
        features_time = self.features_time
        if as_of is None:
            return features_time
        moment = as_utc(as_of)
        latest = max(datetime.now(UTC), features_time) + MAX_AHEAD
        if not features_time <= moment <= latest:
            raise HTTPException(
                422,
                f"as_of must lie between {features_time.isoformat()} (the time the stored features are current "
                f"to: earlier moments would read later purchases) and {latest.isoformat()}; got {moment.isoformat()}",
            )
        return moment

    def _online(self, customer_ids: list[str], as_of: datetime) -> pd.DataFrame:
        return _frame(self._read(customer_ids, as_of))

    def _read(self, customer_ids: list[str], as_of: datetime) -> dict[str, list]:
        try:
            return self.reader.read(customer_ids, as_of)
        except Exception as error:  # the store is a backend: its failure is not the client's fault
            raise HTTPException(503, f"online feature store unavailable: {type(error).__name__}") from error

    def profile(self, customer_ids: list[str], as_of: datetime | None = None, reasons: int = 3) -> dict[str, Any]:
        """Every indicator, segments, top reasons, model versions and feature time per customer."""
        moment = self._moment(as_of)
        values = self._read(list(dict.fromkeys(customer_ids)), moment)
        # Sorted on the lists as read: with pandas this took a millisecond of a one-customer call.
        ids = values["customer_id"]
        found = [signup is not None for signup in values["signup_at"]]
        consent = may_score(values["profiling_consent"], self.unknown_consent).tolist()
        keep = [i for i, (f, c) in enumerate(zip(found, consent, strict=True)) if f and c]
        scored = values if len(keep) == len(ids) else {name: [column[i] for i in keep] for name, column in values.items()}
        bulk = len(keep) >= BULK_CUSTOMERS and reasons > 0  # its reasons on one core (see ``profile_route``)
        profiles = self.champions.score(_frame(scored), moment, reasons=reasons, parallel=not bulk) if keep else []
        return {
            "profiles": profiles,
            "not_found": [cid for cid, f in zip(ids, found, strict=True) if not f],
            "not_scored_without_consent": [cid for cid, f, c in zip(ids, found, consent, strict=True) if f and not c],
        }

    @api.post("/profile", response_model=None, responses={200: {"model": ProfileResponse}, **JSON_ERRORS})
    def profile_route(self, request: ProfileRequest) -> guard.FiniteJSONResponse:
        """Every indicator, segments, top reasons, model versions and feature time per customer;
        unknown ids and customers who may not be profiled are listed, not scored."""
        if len(request.customer_ids) < BULK_CUSTOMERS or not request.reasons:
            return guard.FiniteJSONResponse(self.profile(request.customer_ids, request.as_of, request.reasons))
        # A bulk call with reasons, read to rendered, one at a time across the workers and on
        # one core: with every core on bulk SHAP, one-customer calls waited behind it.
        with bulk_lane(self.config.paths):
            return guard.FiniteJSONResponse(self.profile(request.customer_ids, request.as_of, request.reasons))

    def score(self, features: dict[str, Any]) -> dict[str, Any]:
        """What-if: the indicators for a feature payload (missing features are unknown)."""
        given = {name: value for name, value in features.items() if value is not None}
        unknown = dict.fromkeys(FeaturePayload.model_fields)
        frame = pd.DataFrame([{"customer_id": "what-if", **unknown, **given}])
        frame = frame.astype({c: float for c in frame.columns if frame[c].isna().all()})
        [record] = self.champions.score(frame, self.features_time)
        record.pop("customer_id")
        typical = self._typical_ranges()
        record["unusual_features"] = [
            {"feature": name, "value": float(value), "typical_min": typical[name][0], "typical_max": typical[name][1]}
            for name, value in given.items()
            if name in typical and not isinstance(value, bool) and not typical[name][0] <= value <= typical[name][1]
        ]
        return record

    @api.post("/score", response_model=None, responses={200: {"model": ScoreResponse}, **JSON_ERRORS})
    def score_route(self, request: ScoreRequest) -> guard.FiniteJSONResponse:
        """What-if: the indicators for a feature payload; values outside the stored customers'
        range are listed in ``unusual_features`` (the models extrapolate there)."""
        return guard.FiniteJSONResponse(self.score(request.features.model_dump(exclude_unset=True)))

    def explain(self, customer_id: str, as_of: datetime | None = None) -> dict[str, Any]:
        """Every SHAP contribution per indicator for one customer."""
        features = self._online([customer_id], self._moment(as_of))
        if features["signup_at"].isna().all():
            return {"customer_id": customer_id, "found": False}
        if not may_score(features["profiling_consent"], self.unknown_consent).all():
            return {"customer_id": customer_id, "found": True, "not_scored_without_consent": True}
        explanations = {}
        for indicator, (name, sign) in self.champions.explained.items():
            x, contributions = self.champions.models[name].explain(features)
            explanations[indicator] = {
                "base_value": float(contributions[0, -1] * sign),
                "contributions": top_reasons(x, contributions, k=x.shape[1], sign=sign)[0],
            }
        return {"customer_id": customer_id, "found": True, "explanations": explanations}

    @api.post("/explain", response_model=None, responses={200: {"model": ExplainResponse}, **JSON_ERRORS})
    def explain_route(self, request: ExplainRequest) -> guard.FiniteJSONResponse:
        """Every SHAP contribution per indicator for one customer (none for one who may not be profiled)."""
        return guard.FiniteJSONResponse(self.explain(request.customer_id, request.as_of))

    def lookalike(self, seed_customer_ids: list[str], audience_percent: float) -> dict[str, Any]:
        """Non-seed customers ranked by similarity to the seed; the expected precision comes from
        held-out seed members, and a seed they show no signal for gets none (``signal: false``).
        Only customers who may be profiled take part: a seed id without consent is left out
        (and counted), and the audience is drawn from consenting customers only."""
        everyone = self._latest_features()
        changed = journal.latest_consents(self.config.paths)  # given or withdrawn by events since the build
        consents = [changed.get(c, v) for c, v in zip(everyone["customer_id"], everyone["profiling_consent"], strict=True)]
        population = everyone[may_score(consents, self.unknown_consent)].reset_index(drop=True)
        asked = set(seed_customer_ids)
        seeds = asked & set(population["customer_id"])
        without_consent = len(asked & set(everyone["customer_id"])) - len(seeds)
        if len(seeds) < 10:
            raise HTTPException(
                422,
                f"only {len(seeds)} seed ids have features and profiling consent ({without_consent} left out for "
                "consent); at least 10 are needed",
            )
        return lookalike_audience_response(population, seeds, audience_percent, seed_ids_without_consent=without_consent)

    @api.post("/lookalike", response_model=None, responses={200: {"model": LookalikeResponse}, **JSON_ERRORS})
    def lookalike_route(self, request: LookalikeRequest) -> guard.FiniteJSONResponse:
        """An audience like the seed, and what held-out seed members say it is worth."""
        return guard.FiniteJSONResponse(self.lookalike(request.seed_customer_ids, request.audience_percent))

    def _typical_ranges(self) -> dict[str, tuple[float, float]]:
        """Per numeric feature, the middle 99.8% of the stored customers' values."""
        self._latest_features()
        return self._typical

    def _latest_features(self) -> pd.DataFrame:
        """Every customer's latest features (the lookalike population) and their typical ranges,
        built again when the features are rewritten (a new snapshot, an erasure); one request
        builds them while the others wait, and a failed build keeps the last."""
        stamp = self._latest_stamp()  # taken before the read: a rewrite after it is seen
        with self._population_lock:
            if self._population is None or stamp != self._population_stamp:
                paths = self.config.paths
                ids = pd.read_parquet(paths.features / "customer_profile.parquet", columns=["customer_id"])["customer_id"]
                rows = pd.DataFrame({"customer_id": ids.sort_values().to_numpy(), "cutoff": pd.Timestamp(self.features_time)})
                population = features_at(self.store, rows)
                numbers = population.select_dtypes("number")
                low, high = (numbers.quantile(q) for q in TYPICAL_QUANTILES)
                typical = {c: (float(low[c]), float(high[c])) for c in numbers.columns if pd.notna(low[c])}
                self._population, self._typical, self._population_stamp = population, typical, stamp
            return self._population

    def events(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """Journal and apply ``events``: on return they are durable and every profile read
        reflects them."""
        try:
            result = self.event_sink.accept(events)
        except EventsRejected as rejected:
            items = [{"loc": ["body", "events", position], "msg": f"{event_id}: {reason}", "type": "rejected_event"}
                     for position, event_id, reason in rejected.problems]
            raise HTTPException(422, {"error": str(rejected), "detail": items}) from None
        except DataBusy as busy:
            raise HTTPException(503, f"{busy}; retry", headers={"Retry-After": EVENTS_RETRY_SECONDS}) from None
        except OnlineWriteFailed as failed:
            raise HTTPException(503, str(failed), headers={"Retry-After": EVENTS_RETRY_SECONDS}) from failed
        except (OSError, sqlite3.Error) as error:  # the journal's disk
            raise HTTPException(503, f"events could not be written ({type(error).__name__}); nothing was applied: "
                                "retry", headers={"Retry-After": EVENTS_RETRY_SECONDS}) from error
        return {"accepted": result.accepted, "duplicates": result.duplicates, "suppressed": result.suppressed, "rejected": []}

    @api.post("/events", response_model=None, responses={200: {"model": EventsResponse}, **JSON_ERRORS})
    def events_route(self, request: EventsRequest) -> guard.FiniteJSONResponse:
        """Up to 1,000 purchases, refunds, behavioural events and customer changes. A batch with
        a bad event is refused whole (422, each bad event named); a repeated event id is
        accepted once. On 200 the events are on disk and /profile reflects them."""
        return guard.FiniteJSONResponse(self.events([event.model_dump() for event in request.events]))

    @api.get("/metadata", responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}})
    def metadata(self) -> dict[str, Any]:
        """Champion versions, their training windows and backtest metrics, the feature service."""
        return {
            "model_versions": self.champions.versions,
            "champions": self.champions.provenance,
            "feature_service": feature_store.DEFAULT_SERVICE,
            "tracking_uri": _without_password(self.config.mlflow_tracking_uri),
            "segments": {"value_tiers": self.champions.value_tiers, "churn_bands": catalogue.churn_bands_text()},
        }


BULK_WAIT_SECONDS = 30.0  # well inside the 60 s request timeout
BULK_WAITING = threading.BoundedSemaphore(4)  # bulk calls of this worker in or before the lane


@contextmanager
def bulk_lane(paths: Any) -> Iterator[None]:
    """One bulk call at a time across the workers serving this data directory. A call that
    cannot enter within ``BULK_WAIT_SECONDS``, or finds four of this worker's bulk calls
    already waiting, gets 503 with Retry-After: waiting calls would hold the threads that
    one-customer calls need."""
    busy = HTTPException(503, "too many bulk calls at once; retry, or ask for \"reasons\": 0", headers={"Retry-After": "5"})
    if not BULK_WAITING.acquire(blocking=False):
        raise busy
    name = hashlib.sha256(str(paths.data_dir.resolve()).encode()).hexdigest()[:16]
    fd = os.open(Path(tempfile.gettempdir()) / f"indicators-bulk-{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + BULK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise busy from None
                time.sleep(0.005)
        yield
    finally:
        os.close(fd)  # releases the lock
        BULK_WAITING.release()


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if not parts.password:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


# Outermost first: a request without a valid key is refused before its body is read.
CustomerIndicators.add_asgi_middleware(access.ApiKeyMiddleware)
CustomerIndicators.add_asgi_middleware(guard.RequestGuard)
