"""sd_notify without systemd: :class:`RecordingNotifier` keeps the messages a daemon sends."""

from __future__ import annotations

from nsg_agent.host.notify import Notifier


class RecordingNotifier(Notifier):
    """Collects sd_notify messages instead of sending them: ``sent`` holds each message's
    fields, e.g. ``("READY=1", "STATUS=enforcing ...")``."""

    def __init__(self, watchdog_interval: float | None = None) -> None:
        super().__init__({})
        self.watchdog_interval = watchdog_interval
        self.sent: list[tuple[str, ...]] = []

    def notify(self, *fields: str) -> bool:
        self.sent.append(fields)
        return True

    @property
    def states(self) -> list[str]:
        """Each message's first field, in order (READY=1, STATUS=..., WATCHDOG=1)."""
        return [m[0] for m in self.sent]
