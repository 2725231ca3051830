"""``python -m registration_core``: see :mod:`registration_core.cli`."""

import sys

from .cli import main

sys.exit(main())
