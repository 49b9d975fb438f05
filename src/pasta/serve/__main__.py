"""`python -m pasta.serve [options]`: the same as `pasta serve [options]`."""

import sys

from .cli import main

sys.exit(main())
