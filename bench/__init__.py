"""lwfm-bus performance suite (issue 9).

``.venv/bin/python -m bench`` runs every benchmark, each in its own process with a
hard timeout, prints one table and (with ``--json PATH``) writes the figures;
``--quick`` runs small sizes in under a minute for CI, which asserts nothing.  Each
figure is set beside a baseline measured in the same run, because the machines this
runs on are shared and noisy: a ratio against a same-run baseline survives noise that
an absolute figure does not.  See ``bench/_suite.py`` for the runner.
"""
