"""``python -m mobilenets`` (and ``torchrun -m mobilenets``) runs the CLI."""

import sys

from .cli import main

sys.exit(main())
