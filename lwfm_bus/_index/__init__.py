"""Stage 2 of the flow, read side: the SQLite projection of the stream.

``_projection`` (the :class:`JobIndex`: jobs, workflows, triggers, a catch-up loop
over the stream), ``_data`` (data records and typed metadata lookups) and ``_ws``
(workspaces).  The index is a cache: deleting it loses nothing, the stream rebuilds it.

Imports point down only: the vocabulary and the event bus (``.._bus``).  The index
and the sites never import each other.
"""
