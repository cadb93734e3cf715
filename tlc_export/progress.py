"""Progress bars (tqdm) on stderr for steps that take more than a few seconds.

Silent when stderr is not a terminal, so logs and scripts keep only the stage lines and results.
"""
from __future__ import annotations

import sys
import threading
from contextlib import contextmanager

from tqdm import tqdm


def interactive() -> bool:
    return sys.stderr.isatty()


def bar(total: int | None = None, desc: str = "", unit: str = "it", bar_format: str | None = None) -> tqdm:
    """A bar on stderr; disabled (no output at all) when stderr is not a terminal."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not interactive(),
                leave=False, dynamic_ncols=True, bar_format=bar_format)


@contextmanager
def ticking(desc: str, interval: float = 0.5):
    """For one long call that reports nothing (an ONNX export): a bar showing the elapsed time."""
    with bar(desc=desc, bar_format="{desc}: {elapsed} elapsed") as b:
        if b.disable:
            yield b
            return
        stop = threading.Event()

        def tick():
            while not stop.wait(interval):
                b.refresh()

        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
        try:
            yield b
        finally:
            stop.set()
            thread.join()


@contextmanager
def module_calls(model, desc: str, total: int | None = None, kinds: tuple = ()):
    """A bar advanced by every forward call of ``model``'s submodules of the given types (all leaf
    modules when ``kinds`` is empty): progress inside one long forward pass."""
    with bar(total=total, desc=desc, unit="layer") as b:
        if b.disable:
            yield b
            return
        modules = [m for m in model.modules() if (isinstance(m, kinds) if kinds else not any(m.children()))]
        handles = [m.register_forward_hook(lambda *_: b.update(1)) for m in modules]
        try:
            yield b
        finally:
            for h in handles:
                h.remove()
