"""The old import path of `starlora serve`'s module: `starlora.serve` is starlora.human_loop.serve."""

import sys

from .human_loop import serve

sys.modules[__name__] = serve
