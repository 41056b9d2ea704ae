"""``python -m latentkit.cli``: the ``latentkit`` command (e.g. under ``torchrun``)."""

import sys

from latentkit.cli import main

sys.exit(main())
