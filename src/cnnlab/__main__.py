"""`python -m cnnlab ...` is the `cnnlab` command (for environments without the console script)."""

import sys

from cnnlab.cli.main import main

sys.exit(main())
