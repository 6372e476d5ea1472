"""Site adapter plugins shipped with lwfm-bus: ``ssh`` and ``slurm``.

They are found by the core like any third-party adapter, through the entry-point group
``lwfm_bus.sites`` declared in ``pyproject.toml``; the core never names them.  Modules
with a leading underscore are their private building blocks (the SSH connection pool,
the remote scripts, the batched watcher, Slurm's output parsers).
"""
