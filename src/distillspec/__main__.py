"""`python -m distillspec` is the same as the `distillspec` command."""

import sys

from .cli import main

sys.exit(main())
