"""``python -m lgm_core ...``: see :mod:`lgm_core.cli`."""

import sys

from lgm_core.cli import main

sys.exit(main(prog="python -m lgm_core"))
