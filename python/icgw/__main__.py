"""`python -m icgw`: the same command as the `icgw` console script."""

import sys

from icgw.cli import main

sys.exit(main())
