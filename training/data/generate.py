"""Synthetic customers from a latent buy-till-you-die process.

Every customer has a latent purchase rate, a dropout time and a spend level (Pareto/NBD-like
heterogeneity), shaped by their profile (interests, income, acquisition channel). Purchases
follow a seasonal Poisson process until dropout; behaviour (sessions, views, cart adds,
e-mail engagement, support contacts) follows the same latent state and fades in the weeks
before a customer drops out, so behaviour carries signal that transactions alone do not.

Work is done in fixed-size chunks with one random stream per chunk, so memory stays bounded
at any scale and the output is byte-for-byte identical for a seed, whatever the machine.
The latent truth goes to ``truth/latent.parquet``, a file no feature reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from training.config import as_utc
from training.data.schemas import EVENT_TYPES

CHUNK_SIZE = 25_000

AGE_BANDS = ["18-24", "25-34", "35-44", "45-54", "55-64", "65+"]
AGE_P = [0.12, 0.24, 0.22, 0.18, 0.14, 0.10]
REGIONS = ["north", "south", "east", "west", "central"]
REGION_P = [0.22, 0.24, 0.18, 0.20, 0.16]
INCOME_BANDS = ["low", "middle", "high"]
INCOME_P = [0.3, 0.5, 0.2]
ACQUISITION = ["organic", "paid_search", "social", "referral", "email", "affiliate"]
ACQUISITION_P = [0.30, 0.22, 0.18, 0.12, 0.10, 0.08]
CONTACT_CHANNELS = ["email", "sms", "push", "none"]
CONTACT_P = [0.55, 0.15, 0.20, 0.10]
CONTACT_FREQUENCIES = ["weekly", "monthly", "rarely"]
FREQUENCY_P = [0.3, 0.45, 0.25]
SALES_CHANNELS = ["web", "app", "store"]
CATEGORIES = ["apparel", "home", "electronics", "beauty", "grocery", "sustainable"]
CATEGORY_BASE_WEIGHT = np.array([0.25, 0.20, 0.12, 0.15, 0.18, 0.10])
CATEGORY_PRICE = np.array([1.0, 1.3, 2.2, 0.7, 0.5, 1.1])
CATEGORY_REFUND_P = np.array([0.07, 0.04, 0.06, 0.03, 0.01, 0.03])
SEASON_MAX = 2.0
EMAIL_EVERY_DAYS = 14.0
FADE_DAYS = 60.0


@dataclass(frozen=True)
class GenerationSpec:
    """What to generate. ``start`` + ``days`` is the observed history.

    The export shape mimics what real shops hand over: ``line_items`` writes one row per
    product of an order (``product_id``, ``quantity``, ``unit_price``, several rows sharing an
    ``order_id``); ``omit_columns`` drops optional transaction columns; ``transactions_only``
    writes no customers or events table. The customers' behaviour is the same whatever the shape.
    """

    customers: int
    seed: int = 42
    start: date = date(2024, 11, 1)
    days: int = 730
    line_items: bool = False
    omit_columns: tuple[str, ...] = ()
    transactions_only: bool = False

    @property
    def start_ts(self) -> datetime:
        return as_utc(self.start)

    @property
    def end_ts(self) -> datetime:
        """Exclusive end of the observed history."""
        return self.start_ts + timedelta(days=self.days)


@dataclass(frozen=True)
class GenerationSummary:
    customers: int
    transactions: int
    events: int
    start: datetime
    end: datetime
    files: dict[str, Path]


def seasonality(day_of_year: np.ndarray) -> np.ndarray:
    """Relative purchase intensity by day of year: mild summer dip, strong late-year peak."""
    yearly = 1.0 + 0.15 * np.cos(2 * np.pi * (day_of_year - 15) / 365.25)
    holidays = 0.8 * np.exp(-(((day_of_year - 340) / 14.0) ** 2))
    return np.minimum(yearly + holidays, SEASON_MAX)


def engagement(day: np.ndarray, dropout_day: np.ndarray) -> np.ndarray:
    """Engagement level in [0.05, 1]: full while active, fading over ``FADE_DAYS`` before dropout."""
    to_dropout = dropout_day - day
    fading = 0.15 + 0.85 * np.clip(to_dropout / FADE_DAYS, 0.0, 1.0)
    return np.where(to_dropout > 0, fading, 0.05)


def _choice(rng: np.random.Generator, options: list[str], p: list[float], n: int) -> np.ndarray:
    return np.asarray(options, dtype=object)[rng.choice(len(options), size=n, p=p)]


def _poisson_process(
    rng: np.random.Generator,
    owner_rate: np.ndarray,
    window_start: np.ndarray,
    window_end: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Homogeneous Poisson arrivals per owner in [start, end): (owner index, day) arrays."""
    length = np.maximum(window_end - window_start, 0.0)
    counts = rng.poisson(owner_rate * length)
    owner = np.repeat(np.arange(owner_rate.size), counts)
    day = window_start[owner] + rng.random(owner.size) * length[owner]
    return owner, day


def _keep(rng: np.random.Generator, probability: np.ndarray) -> np.ndarray:
    return rng.random(probability.size) < probability


def _timestamps(start_us: int, day: np.ndarray) -> pa.Array:
    micros = start_us + np.floor(day * 86_400).astype(np.int64) * 1_000_000
    return pa.array(micros, type=pa.timestamp("us", tz="UTC"))


def _take_ids(ids: pa.Array, owner: np.ndarray) -> pa.Array:
    return pc.take(ids, pa.array(owner, type=pa.int32()))


def generate_chunk(spec: GenerationSpec, chunk_index: int, first_index: int, size: int) -> dict[str, pa.Table]:
    """One chunk of customers with their transactions, events and latent truth."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, chunk_index]))
    n = size
    horizon = float(spec.days)
    start_us = int(spec.start_ts.timestamp()) * 1_000_000
    start_doy = spec.start_ts.timetuple().tm_yday
    ids = pa.array([f"C{first_index + i:08d}" for i in range(n)], type=pa.string())

    # --- who they are -------------------------------------------------------------------
    age = _choice(rng, AGE_BANDS, AGE_P, n)
    region = _choice(rng, REGIONS, REGION_P, n)
    income = _choice(rng, INCOME_BANDS, INCOME_P, n)
    acquisition = _choice(rng, ACQUISITION, ACQUISITION_P, n)
    contact_channel = _choice(rng, CONTACT_CHANNELS, CONTACT_P, n)
    contact_frequency = _choice(rng, CONTACT_FREQUENCIES, FREQUENCY_P, n)
    young = np.isin(age, ["18-24", "25-34"])
    high_income = income == "high"
    low_income = income == "low"
    marketing_consent = rng.random(n) < np.where(contact_channel == "none", 0.2, 0.75)
    profiling_consent = rng.random(n) < 0.88
    sustainable = rng.random(n) < np.where(young, 0.38, 0.18)
    premium = rng.random(n) < np.where(high_income, 0.45, 0.08)
    deals = rng.random(n) < np.where(low_income, 0.55, 0.25)
    # Signups spread over the history, growing over time.
    signup_day = horizon * rng.random(n) ** 0.8

    # --- latent state ---------------------------------------------------------------------
    rate_multiplier = (
        np.where(deals, 1.35, 1.0)
        * np.where(premium, 0.85, 1.0)
        * np.where(acquisition == "referral", 1.25, 1.0)
        * np.where(acquisition == "paid_search", 0.85, 1.0)
    )
    purchase_rate = np.clip(rng.gamma(0.9, 1 / (0.9 * 40.0), n) * rate_multiplier, 1 / 1500, 1 / 3)
    dropout_hazard = rng.gamma(1.1, 1 / (1.1 * 420.0), n) * np.where(acquisition == "social", 1.4, 1.0)
    lifetime = rng.exponential(1.0, n) / dropout_hazard
    dropout_day = signup_day + lifetime
    log_spend = (
        3.7
        + 0.25 * high_income
        - 0.2 * low_income
        + 0.45 * premium
        - 0.15 * deals
        + rng.normal(0, 0.45, n)
    )
    spend_level = np.exp(log_spend)
    category_weight = np.tile(CATEGORY_BASE_WEIGHT, (n, 1))
    category_weight[:, 5] *= np.where(sustainable, 5.0, 0.6)
    category_weight[:, 2] *= np.where(premium, 1.6, 1.0)
    category_weight[:, 3] *= np.where(premium, 1.4, 1.0)
    category_weight[:, 4] *= np.where(deals, 1.6, 1.0)
    category_weight *= rng.gamma(4.0, 0.25, (n, len(CATEGORIES)))
    category_p = category_weight / category_weight.sum(axis=1, keepdims=True)
    discount_p = 0.08 + 0.35 * deals
    channel_p = rng.dirichlet([3.0, 2.0, 1.5], n)

    # --- transactions -------------------------------------------------------------------
    first_day = signup_day + rng.exponential(2.0, n)
    buyer = (first_day < np.minimum(dropout_day, horizon)) & (rng.random(n) < 0.92)
    repeat_owner, repeat_day = _poisson_process(
        rng, purchase_rate * SEASON_MAX, first_day, np.minimum(dropout_day, horizon)
    )
    in_season = _keep(rng, seasonality((start_doy + repeat_day) % 365.25) / SEASON_MAX)
    repeat_owner, repeat_day = repeat_owner[in_season], repeat_day[in_season]
    repeat_keep = buyer[repeat_owner]
    owner = np.concatenate([np.flatnonzero(buyer), repeat_owner[repeat_keep]])
    day = np.concatenate([first_day[buyer], repeat_day[repeat_keep]])
    order = np.lexsort((day, owner))
    owner, day = owner[order], day[order]
    n_tx = owner.size
    sequence = np.arange(n_tx) - np.searchsorted(owner, owner, side="left")

    cumulative = np.cumsum(category_p[owner], axis=1)
    category_idx = np.minimum((rng.random(n_tx)[:, None] > cumulative).sum(axis=1), len(CATEGORIES) - 1)
    gross = spend_level[owner] * CATEGORY_PRICE[category_idx] * rng.gamma(6.0, 1 / 6.0, n_tx)
    discounted = _keep(rng, discount_p[owner])
    discount_rate = np.where(discounted, rng.uniform(0.1, 0.3, n_tx), 0.0)
    amount = np.round(gross * (1 - discount_rate), 2)
    discount = np.round(gross - amount, 2) + 0.0  # no negative zeros
    quantity = 1 + rng.poisson(0.4, n_tx)
    channel_cum = np.cumsum(channel_p[owner], axis=1)
    channel_idx = np.minimum((rng.random(n_tx)[:, None] > channel_cum).sum(axis=1), 2)
    order_ids = pc.binary_join_element_wise(
        _take_ids(ids, owner), pa.array(np.char.zfill(sequence.astype(str), 4)), "-"
    )
    order_ids = pc.binary_join_element_wise(pa.scalar("O"), order_ids, "")

    refunded = _keep(rng, CATEGORY_REFUND_P[category_idx])
    refund_day = day + rng.uniform(2, 30, n_tx)
    refunded &= refund_day < horizon
    partial = rng.random(n_tx) < 0.3
    refund_amount = -np.round(np.where(partial, 0.5, 1.0) * amount, 2)
    r = np.flatnonzero(refunded)
    transactions = pa.table(
        {
            "customer_id": pa.concat_arrays([_take_ids(ids, owner), _take_ids(ids, owner[r])]),
            "timestamp": pa.concat_arrays([_timestamps(start_us, day), _timestamps(start_us, refund_day[r])]),
            "amount": np.concatenate([amount, refund_amount[r]]),
            "order_id": pa.concat_arrays(
                [order_ids, pc.binary_join_element_wise(order_ids.take(pa.array(r)), pa.scalar("R"), "-")]
            ),
            "quantity": np.concatenate([quantity, -quantity[r]]).astype(float),
            "category": np.asarray(CATEGORIES, dtype=object)[np.concatenate([category_idx, category_idx[r]])],
            "channel": np.asarray(SALES_CHANNELS, dtype=object)[np.concatenate([channel_idx, channel_idx[r]])],
            "discount": np.concatenate([discount, np.zeros(r.size)]),
        }
    )
    transactions = transactions.sort_by([("customer_id", "ascending"), ("timestamp", "ascending")])

    # --- behaviour ----------------------------------------------------------------------
    session_rate = 2.5 * purchase_rate + 0.012
    s_owner, s_day = _poisson_process(rng, session_rate, signup_day, np.full(n, horizon))
    s_keep = _keep(rng, engagement(s_day, dropout_day[s_owner]))
    s_owner, s_day = s_owner[s_keep], s_day[s_keep]
    online = channel_idx < 2
    purchase_session_day = np.maximum(
        day[online] - rng.uniform(0.001, 0.02, int(online.sum())), signup_day[owner[online]]
    )
    s_owner = np.concatenate([s_owner, owner[online]])
    s_day = np.concatenate([s_day, purchase_session_day])
    s_eng = engagement(s_day, dropout_day[s_owner])
    views = rng.poisson(0.4 + 0.6 * s_eng)
    v_owner = np.repeat(s_owner, views)
    v_day = np.repeat(s_day, views) + rng.uniform(0.0005, 0.01, v_owner.size)
    is_purchase_session = np.zeros(s_owner.size, dtype=bool)
    is_purchase_session[-int(online.sum()) :] = True
    carted = is_purchase_session | _keep(rng, 0.2 * s_eng)
    c_owner, c_day = s_owner[carted], s_day[carted] + 0.011

    email_owner, email_day = _email_schedule(rng, marketing_consent, signup_day, horizon)
    e_eng = engagement(email_day, dropout_day[email_owner])
    open_propensity = rng.beta(2.0, 5.0, n)
    opened = _keep(rng, open_propensity[email_owner] * e_eng)
    clicked = opened & _keep(rng, 0.12 + 0.25 * e_eng)
    unsubscribe = _keep(rng, 0.001 + 0.01 * (1 - e_eng))
    first_unsub = _first_flagged_day(email_owner, email_day, unsubscribe, n)
    sent = email_day <= first_unsub[email_owner]
    unsub_row = sent & unsubscribe

    support_owner, support_day = _poisson_process(rng, np.full(n, 0.0015), signup_day, np.full(n, horizon))
    complaint = r[_keep(rng, np.full(r.size, 0.6))]
    support_owner = np.concatenate([support_owner, owner[complaint]])
    support_day = np.concatenate([support_day, np.minimum(refund_day[complaint] - 1.0, horizon - 0.01)])

    event_parts = [
        ("session", s_owner, s_day),
        ("product_view", v_owner, v_day),
        ("cart_add", c_owner, c_day),
        ("email_send", email_owner[sent], email_day[sent]),
        ("email_open", email_owner[sent & opened], email_day[sent & opened] + 0.1),
        ("email_click", email_owner[sent & clicked], email_day[sent & clicked] + 0.11),
        ("email_unsubscribe", email_owner[unsub_row], email_day[unsub_row] + 0.12),
        ("support_contact", support_owner, support_day),
    ]
    e_owner = np.concatenate([part[1] for part in event_parts])
    e_day = np.concatenate([part[2] for part in event_parts])
    e_type = np.concatenate([np.full(part[1].size, EVENT_TYPES.index(part[0]), dtype=np.int8) for part in event_parts])
    valid = (e_day < horizon) & (e_day >= 0)
    e_owner, e_day, e_type = e_owner[valid], e_day[valid], e_type[valid]
    order = np.lexsort((e_type, e_day, e_owner))
    e_owner, e_day, e_type = e_owner[order], e_day[order], e_type[order]
    events = pa.table(
        {
            "customer_id": _take_ids(ids, e_owner),
            "timestamp": _timestamps(start_us, e_day),
            "event_type": pa.array(np.asarray(EVENT_TYPES, dtype=object)[e_type], type=pa.string()),
        }
    )

    customers = pa.table(
        {
            "customer_id": ids,
            "signup_at": _timestamps(start_us, signup_day),
            "age_band": age,
            "region": region,
            "income_band": income,
            "acquisition_channel": acquisition,
            "preferred_contact_channel": contact_channel,
            "contact_frequency": contact_frequency,
            "marketing_consent": marketing_consent,
            "profiling_consent": profiling_consent,
            "interest_sustainable": sustainable,
            "interest_premium": premium,
            "interest_deals": deals,
        }
    )
    mean_net_spend = spend_level * (category_p @ CATEGORY_PRICE) * (1 - discount_p * 0.2)
    truth = pa.table(
        {
            "customer_id": ids,
            "purchase_rate_per_day": purchase_rate,
            "dropout_at": _timestamps(start_us, np.minimum(dropout_day, 1e5)),
            "spend_level": spend_level,
            "expected_order_value": mean_net_spend,
            "is_buyer": buyer,
            "sustainable_share": category_p[:, 5],
        }
    )
    return {"customers": customers, "transactions": transactions, "events": events, "latent": truth}


def export_shape(spec: GenerationSpec, tables: dict[str, pa.Table], chunk_index: int) -> dict[str, pa.Table]:
    """The chunk's tables in the export shape of ``spec`` (its own random stream: the shape
    never changes what the customers do)."""
    from training.data.schemas import OPTIONAL_COLUMNS

    unknown = set(spec.omit_columns) - set(OPTIONAL_COLUMNS["transactions"])
    if unknown:
        raise ValueError(f"cannot omit {sorted(unknown)}: optional transaction columns are {OPTIONAL_COLUMNS['transactions']}")
    shaped = dict(tables)
    if spec.line_items:
        rng = np.random.default_rng(np.random.SeedSequence([spec.seed, chunk_index, 1]))
        shaped["transactions"] = _as_line_items(rng, tables["transactions"])
    shaped["transactions"] = shaped["transactions"].drop_columns(
        [c for c in spec.omit_columns if c in shaped["transactions"].column_names]
    )
    if spec.transactions_only:
        del shaped["customers"], shaped["events"]
    return shaped


def _as_line_items(rng: np.random.Generator, transactions: pa.Table) -> pa.Table:
    """Each purchase split into 1-4 product lines of one order (quantity x unit price); a
    refund stays one line. Line amounts are rounded to the cent, so an order's total may
    move by a few cents."""
    amount = transactions.column("amount").to_numpy()
    bought = amount > 0
    lines = np.where(bought, 1 + np.minimum(rng.poisson(0.9, amount.size), 3), 1)
    row = np.repeat(np.arange(amount.size), lines)
    share = rng.gamma(2.0, 1.0, row.size)
    share /= np.bincount(row, weights=share)[row]
    quantity = np.where(bought[row], 1 + rng.poisson(0.5, row.size), np.abs(transactions.column("quantity").to_numpy()[row]))
    unit_price = np.maximum(np.round(np.abs(amount[row]) * share / quantity, 2), 0.01)
    sign = np.where(bought[row], 1.0, -1.0)
    lines_table = transactions.take(pa.array(row))
    category = np.asarray(lines_table.column("category").to_pylist(), dtype=object).astype(str)
    product = np.char.add(np.char.add(category, "-"), rng.integers(100, 999, row.size).astype(str))
    replaced = {
        "amount": pa.array(np.round(sign * quantity * unit_price, 2)),
        "quantity": pa.array(sign * quantity),
        "discount": pa.array(np.round(lines_table.column("discount").to_numpy() * share, 2) + 0.0),
    }
    for name, values in replaced.items():
        lines_table = lines_table.set_column(lines_table.schema.get_field_index(name), name, values)
    lines_table = lines_table.append_column("product_id", pa.array(product.astype(object), type=pa.string()))
    return lines_table.append_column("unit_price", pa.array(unit_price))


def _email_schedule(
    rng: np.random.Generator, consent: np.ndarray, signup_day: np.ndarray, horizon: float
) -> tuple[np.ndarray, np.ndarray]:
    """Newsletter sends every ``EMAIL_EVERY_DAYS`` from signup, for consenting customers."""
    first = signup_day + rng.uniform(0, EMAIL_EVERY_DAYS, signup_day.size)
    counts = np.where(consent, np.maximum(np.ceil((horizon - first) / EMAIL_EVERY_DAYS), 0), 0).astype(np.int64)
    owner = np.repeat(np.arange(signup_day.size), counts)
    k = np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, first[owner] + k * EMAIL_EVERY_DAYS


def _first_flagged_day(owner: np.ndarray, day: np.ndarray, flag: np.ndarray, owners: int) -> np.ndarray:
    """Each owner's earliest flagged day (inf if none): after it, that owner gets nothing more."""
    first = np.full(owners, np.inf)
    np.minimum.at(first, owner[flag], day[flag])
    return first


def generate(
    spec: GenerationSpec,
    out_dir: Path,
    on_chunk: Callable[[int], None] | None = None,
) -> GenerationSummary:
    """Generate ``spec.customers`` customers into ``out_dir/raw`` and ``out_dir/truth``.

    Files are written to temporary names and renamed at the end, so an interrupted run never
    leaves a half-written table behind.
    """
    if spec.customers < 1:
        raise ValueError("customers must be at least 1")
    raw, truth_dir = out_dir / "raw", out_dir / "truth"
    raw.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    targets = {
        "customers": raw / "customers.parquet",
        "transactions": raw / "transactions.parquet",
        "events": raw / "events.parquet",
        "latent": truth_dir / "latent.parquet",
    }
    writers: dict[str, pq.ParquetWriter] = {}
    counts = {"transactions": 0, "events": 0}
    try:
        for chunk_index, first in enumerate(range(0, spec.customers, CHUNK_SIZE)):
            size = min(CHUNK_SIZE, spec.customers - first)
            tables = export_shape(spec, generate_chunk(spec, chunk_index, first, size), chunk_index)
            for name, table in tables.items():
                if name not in writers:
                    writers[name] = pq.ParquetWriter(
                        _partial(targets[name]), table.schema, compression="zstd"
                    )
                writers[name].write_table(table, row_group_size=1_000_000)
                if name in counts:
                    counts[name] += table.num_rows
            if on_chunk is not None:
                on_chunk(size)
    finally:
        for writer in writers.values():
            writer.close()
    for name, target in targets.items():
        if name in writers:
            _partial(target).replace(target)
        else:
            target.unlink(missing_ok=True)  # a shape without this table: no stale one from an earlier run
    return GenerationSummary(
        customers=spec.customers,
        transactions=counts["transactions"],
        events=counts["events"],
        start=spec.start_ts,
        end=spec.end_ts,
        files=targets,
    )


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def random_events(rng: np.random.Generator, customer_ids: list[str], start: datetime, end: datetime, n: int,
                  prefix: str = "ev") -> list[dict]:
    """``n`` events as ``POST /events`` takes them, for the property test and the events
    benchmark: purchases (line items sharing an order, discounts, categories in any case),
    refunds, every behavioural event type and customer changes (consents included), for known
    customers and new ones, at random times in [start, end] (a fifth at midnights, where the
    windows' edges lie), an id repeated now and then."""
    span = (end - start).total_seconds()
    events: list[dict] = []
    categories = ["apparel", "Home", "electronics", "beauty", "grocery", "sustainable", None]
    while len(events) < n:
        k = len(events)
        customer = str(rng.choice(customer_ids)) if rng.random() < 0.8 else f"{prefix}-new-{rng.integers(0, max(n // 20, 5))}"
        moment = start + timedelta(seconds=float(rng.uniform(0, span)))
        if rng.random() < 0.2:
            moment = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        base = {"event_id": f"{prefix}-{k}", "customer_id": customer, "timestamp": moment.isoformat()}
        roll = rng.random()
        if roll < 0.4:
            order = f"{prefix}-order-{k}"
            refund = rng.random() < 0.15
            for line in range(int(rng.integers(1, 4))):
                event = {**base, "event_id": f"{prefix}-{k}-{line}", "kind": "transaction", "order_id": order}
                amount = round(float(rng.gamma(2.0, 20.0)), 2) * (-1 if refund else 1)
                if rng.random() < 0.3:
                    event.update(quantity=float(rng.integers(1, 4)) * (-1 if refund else 1), unit_price=abs(amount))
                else:
                    event["amount"] = amount
                if rng.random() < 0.3:
                    event["discount"] = round(float(rng.uniform(0, 5)), 2) if rng.random() < 0.7 else 0.0
                category = categories[int(rng.integers(0, len(categories)))]
                if category is not None:
                    event["category"] = category
                events.append(event)
        elif roll < 0.9:
            events.append({**base, "kind": "event", "event_type": str(rng.choice(EVENT_TYPES))})
        else:
            change = {"profiling_consent": bool(rng.random() < 0.8), "region": str(rng.choice(["north", "south", "east"]))}
            if rng.random() < 0.3:
                change["marketing_consent"] = bool(rng.random() < 0.5)
            events.append({**base, "kind": "customer", **change})
        if rng.random() < 0.03 and events:
            events.append(dict(events[int(rng.integers(0, len(events)))]))  # sent twice
    return events[:n]
