"""Allow ``python3 -m restart``."""

import sys

from restart.cli import main

sys.exit(main())
