"""`python -m server` is the `segswap` command."""

import sys

from server.cli.main import main

sys.exit(main())
