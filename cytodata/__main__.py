"""``python -m cytodata`` (and ``torchrun -m cytodata train ...``): the command-line interface."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
