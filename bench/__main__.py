"""``python -m bench``: the performance suite (see bench/_suite.py)."""

from __future__ import annotations

import sys

from bench._suite import main

sys.exit(main())
