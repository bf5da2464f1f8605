"""How an option is declared (:mod:`.option`): once, on the dataclass field of the block using it.

Framework-free and below every block: the engine's and the planner's blocks import it, and
:mod:`dataset_assets.catalogue` (one floor up) gathers their declarations into the one table
the spec, the ``dataset`` resource, the CLI and README are derived from.
"""
