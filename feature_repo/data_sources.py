"""Parquet snapshot files written by ``indicators features`` (see ``sql/``).

Paths point at the default data directory; ``training.features.store`` rebases them onto the
configured one, so the same definitions serve the CLI, tests and notebooks.
"""

from pathlib import Path

from feast import FileSource, PushSource
from feast.data_format import ParquetFormat

DEFAULT_FEATURES_DIR = Path(__file__).resolve().parents[1] / "data" / "features"

transactions_source = FileSource(
    name="customer_transactions_snapshots",
    path=str(DEFAULT_FEATURES_DIR / "customer_transactions.parquet"),
    file_format=ParquetFormat(),
    timestamp_field="snapshot_at",
    description="Transactional features per customer and snapshot date (sql/transactions.sql).",
)

behaviour_source = FileSource(
    name="customer_behaviour_snapshots",
    path=str(DEFAULT_FEATURES_DIR / "customer_behaviour.parquet"),
    file_format=ParquetFormat(),
    timestamp_field="snapshot_at",
    description="Behavioural features per customer and snapshot date (sql/behaviour.sql).",
)

profile_source = FileSource(
    name="customer_profile_rows",
    path=str(DEFAULT_FEATURES_DIR / "customer_profile.parquet"),
    file_format=ParquetFormat(),
    timestamp_field="profile_at",
    description="Who the customer is, valid from signup (sql/profile.sql).",
)

predictions_source = FileSource(
    name="customer_predictions_rows",
    path=str(DEFAULT_FEATURES_DIR / "customer_predictions.parquet"),
    file_format=ParquetFormat(),
    timestamp_field="scored_at",
    description="Indicators written back by batch enrichment (`indicators score`).",
)


# Accepted events update the online store through these (``serving.events``): each view's
# source is a push source over its snapshot file, so offline reads still go to the file.
transactions_push = PushSource(name="customer_transactions_push", batch_source=transactions_source)
behaviour_push = PushSource(name="customer_behaviour_push", batch_source=behaviour_source)
profile_push = PushSource(name="customer_profile_push", batch_source=profile_source)
predictions_push = PushSource(name="customer_predictions_push", batch_source=predictions_source)
