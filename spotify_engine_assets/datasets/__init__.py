"""One package per chain: the only chain-specific code (loaders, graph builders, splits, protocols).
Each exports ``DATASET``, the :class:`~spotify_engine_assets.core.dataset.Dataset` the core and the
Dagster chain factory run on."""
