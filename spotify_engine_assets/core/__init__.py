"""The Dagster-free core every chain runs on: data and graphs, models, training, evaluation,
experiments and studies, serving, storage. It imports no dataset and no Dagster code; a chain is a
:class:`~spotify_engine_assets.core.dataset.Dataset` built from it (``datasets/``)."""
