"""`python -m starlora` (and `accelerate launch -m starlora`) run the command line."""

import sys

from .cli import main

sys.exit(main())
