"""What a shard is on disk, in one place: file names, sample columns, and one class per format.

- :mod:`.layout`: shard and stats file names, sample keys, the per-sample columns.
- :mod:`.formats`: the :class:`~.formats.ShardFormat` interface (a sink that writes samples, a
  reader that gives them back) and the simple formats; :mod:`.webdataset` and :mod:`.tfrecord`
  the container formats; :mod:`.registry` the table of formats by ``output_format`` name.
- :mod:`.writer`: :class:`~.writer.ShardWriter`, which streams one shard's results into its
  format and commits the files atomically.

Adding a format is one class in its own module and one line in :mod:`.registry`. This package's
``__init__`` imports nothing, so that the option declarations can read the registry.
"""
