"""BentoML service and batch enrichment."""
