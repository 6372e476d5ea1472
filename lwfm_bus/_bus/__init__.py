"""Stage 1 of the flow: publish -> stream.  Servers, and how buses reach each other.

``_eventbus`` (the connection: publish until acknowledged, replay, dead letters),
``_server`` (the embedded nats-server process), ``_natsconf`` (every line of
nats-server configuration this package writes), ``_connect`` (which server a
config means, started or found), ``_autostart`` (a background ``lwfm-bus up`` for a
client that finds nothing running), ``_fedkeeper`` (a federation's sources kept
going) and ``_bundle`` (a stream slice carried to another bus as a file).

Imports point down only: the vocabulary modules at the package root.  Nothing here
imports the index, the sites, the engine, the repository or the ``Bus`` facade.
"""
