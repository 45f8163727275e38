"""Feast feature repository: the single definition of profile features."""
