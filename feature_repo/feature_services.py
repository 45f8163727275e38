"""One FeatureService per model version: what each model was trained on and is served with."""

from feast import FeatureService

from feature_repo.feature_views import customer_behaviour, customer_profile, customer_transactions
from feature_repo.on_demand_views import customer_recency

PROFILE_VIEWS = [customer_transactions, customer_behaviour, customer_profile, customer_recency]

customer_indicators_v1 = FeatureService(
    name="customer_indicators_v1",
    features=PROFILE_VIEWS,
    description="Every profile feature; used by all indicator models of version 1.",
)
