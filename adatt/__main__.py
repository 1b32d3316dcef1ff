"""``python -m adatt`` (also what ``torchrun -m adatt`` runs)."""

import sys

from adatt.cli import main

sys.exit(main())
