"""The one partitions definition: a dynamic partition per shard (keys 00000, 00001, ...).

Dynamic rather than static because the number of shards is known only after the URL list
has been de-duplicated and filtered; ``url_shards`` registers them.
"""

import dagster as dg

SHARDS = "shards"
shards_partitions = dg.DynamicPartitionsDefinition(name=SHARDS)

# add_dynamic_partitions sends all keys in one SQL statement; SQLite caps its variables.
REGISTER_CHUNK = 10_000
