"""The customer entity: every profile feature is keyed by ``customer_id``."""

from feast import Entity, ValueType

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.STRING,
    description="A customer of the business, as identified in the transaction log.",
)
