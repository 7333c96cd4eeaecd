"""A clock the test moves by hand, for everything that takes ``clock=`` (the reconciler, the
scheduler): debounce, backoff and resync deadlines without sleeping."""

from __future__ import annotations


class FakeClock:
    """A monotonic clock: ``clock()`` reads it, ``clock.advance(seconds)`` moves it."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock does not go back")
        self.now += seconds
