"""`python -m server` is the `segswap` command."""

import sys

from .cli import main

sys.exit(main())
