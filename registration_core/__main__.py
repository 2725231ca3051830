"""``python -m registration_core``: see :mod:`registration_core.cli`."""

import sys

from registration_core.cli import main

sys.exit(main())
