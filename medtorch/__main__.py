"""``python -m medtorch`` runs the same command line as the ``medtorch`` console script."""

import sys

from medtorch.cli import main

sys.exit(main())
