"""Stage: submission -> agent -> adapter -> status events.

What must run is on the bus: ``_submit`` stores a job's submission for its site in
JetStream; the site's agents (``_agent``) take submissions from there and run them
through the site's adapter (the Protocol in ``_protocol``); what the adapter observes
is published by ``_report``, retried until the server acknowledges it.

Imports point down only: this folder uses the vocabulary modules and the event bus
(``.._bus``), never the engine, the repository or the ``Bus`` facade.
"""

from __future__ import annotations

from ._protocol import LogStream, SiteAdapter, SiteRole, SiteRuntime, StatusReporter

__all__ = ["LogStream", "SiteAdapter", "SiteRole", "SiteRuntime", "StatusReporter"]
