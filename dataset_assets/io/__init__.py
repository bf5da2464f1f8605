"""The one door for storage I/O, framework-free like the engine.

- :mod:`.storage`: which filesystem a URL is on (fsspec, local or object store), the output
  folder with its one atomic publish (``_tmp`` then commit; a stats json last), and
  :func:`.storage.staged_file` for files a library must write to a local path.
- :mod:`.sources`: every URL-list format as a DuckDB ``FROM`` expression, local or remote.

The engine, the planner and the reporting code all read and write through these modules.
"""
