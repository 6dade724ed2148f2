"""``python -m vlmtune`` (and ``accelerate launch -m vlmtune train ...``)."""

import sys

from vlmtune.cli import main

sys.exit(main())
