"""``python -m aipray.report``."""

import sys

from aipray.report import main

sys.exit(main())
