"""`python -m server` is the `tandem` command."""

import sys

from server.cli import main

sys.exit(main())
