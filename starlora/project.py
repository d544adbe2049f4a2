"""The old import path of the human loop's project module: `starlora.project` is starlora.human_loop.project."""

import sys

from .human_loop import project

sys.modules[__name__] = project
