-- Run by the postgres image on the first start of its volume: one database per store
-- (pipelines/stack.py DATABASES; the prediction store is POSTGRES_DB).
CREATE DATABASE riskloop_mlflow;
CREATE DATABASE riskloop_optuna;
