"""`python -m flotilla`: the same as the `flotilla` command."""

import sys

from flotilla.cli import main

sys.exit(main())
