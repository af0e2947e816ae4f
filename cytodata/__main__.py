"""``python -m cytodata ...``: the same as the ``cytodata`` command."""

import sys

from .cli import main

sys.exit(main())
