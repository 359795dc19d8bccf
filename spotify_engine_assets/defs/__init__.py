"""Dagster definitions only: one package per chain (its ingestion, graph and split, and what only it
has), the chain factory (:mod:`.chain`) that gives every chain the same models, reports,
experiments and studies, the SQL project (:mod:`.sql`) and the shared resources."""
