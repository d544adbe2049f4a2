"""The progress bars every long loop shows (tqdm), and a way for the web page to follow the bars of a background job.
STARLORA_NO_PROGRESS=1 keeps the console quiet."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager

from tqdm.auto import tqdm

_watchers = threading.local()


def progress(iterable=None, disable: bool = False, **kwargs):
    """A tqdm bar (quiet under STARLORA_NO_PROGRESS), handed to this thread's watcher if one is set."""
    if getattr(_watchers, "hidden", False):  # inside hidden_progress: an outer bar speaks for this loop
        return tqdm(iterable, disable=True, **kwargs)
    disable = disable or bool(os.environ.get("STARLORA_NO_PROGRESS"))
    watch = getattr(_watchers, "watch", None)
    if watch is None:
        return tqdm(iterable, disable=disable, dynamic_ncols=True, **kwargs)
    # a watched bar always counts (a disabled tqdm does not); it just prints nowhere when the console wants quiet
    bar = tqdm(iterable, dynamic_ncols=True, file=_Nowhere() if disable else None, **kwargs)
    watch(bar)
    return bar


class _Nowhere:
    def write(self, text):
        pass

    def flush(self):
        pass


@contextmanager
def watch_progress(callback):
    """Hand every progress bar this thread opens to `callback(bar)`, which may read bar.n, bar.total and bar.desc
    while the work goes on (the web page's progress bar follows a training this way)."""
    _watchers.watch = callback
    try:
        yield
    finally:
        _watchers.watch = None


@contextmanager
def hidden_progress():
    """Bars this thread opens inside are silent and unwatched: a loop with one overall bar (predict's rows, with
    its ETA) calls functions that open bars of their own per piece of work."""
    before = getattr(_watchers, "hidden", False)
    _watchers.hidden = True
    try:
        yield
    finally:
        _watchers.hidden = before
