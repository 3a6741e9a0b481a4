"""Optuna search, XGBoost fitting, metrics, MLflow logging and registry operations."""
