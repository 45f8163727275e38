"""Training side of the customer-indicators project: data, features, models, evaluation."""
