"""Options declared once (:mod:`.option`) and the table of all of them (:mod:`.catalogue`).

Framework-free, like the engine: the engine's and the planner's blocks declare their options
with :func:`.option.option`; the catalogue gathers them for the spec, the resource, the CLI and
README. Import the catalogue lazily: it imports the blocks, which import :mod:`.option`.
"""
