"""python -m runner.review: see runner/review/__init__.py."""

import sys

from . import main

sys.exit(main())
