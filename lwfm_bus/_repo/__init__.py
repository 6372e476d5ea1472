"""Stage 3 of the flow, data side: the metadata repository and workspaces.

``_repository`` (notate, put, get, find, provenance: data records over the index and
the sites) and ``_workspaces`` (named, shareable views of data).

Imports point down only: the vocabulary, the event bus, the index and the sites.  The
repository and the engine never import each other; nothing here names ``Bus`` (what
it needs of one is the small ``RepoBus`` Protocol).
"""
