"""Shared core of riskloop: typed settings, store locations and user-facing errors."""
