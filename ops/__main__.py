"""`python -m ops` is the `ops` command (supervisord runs roles this way)."""

import sys

from ops.cli import main

sys.exit(main())
