"""Stage 3 of the flow: stream -> judge -> claim -> submit.

``_replica`` (one engine replica: its lifecycle and the work loop), ``_feed`` (the
trigger index kept up to date, and the barrier that orders judging after it),
``_judging`` (job-status triggers, joins, data signatures, "the condition already
holds"), ``_firing`` (claim, submit, announce, settle), ``_deadlines`` (``within``
windows), ``_matcher`` (the trigger index itself: pure, no I/O) and ``_store`` (the
firing claims and join progress in KV).

Imports point down only: the vocabulary, the event bus and the sites' dispatcher.
The engine and the repository never import each other; nothing here names ``Bus``.
"""
