"""journald priorities for log lines when the process runs under systemd.

systemd connects a service's stderr to the journal and says so in ``JOURNAL_STREAM``
(``<device>:<inode>`` of that stream). journald reads a ``<N>`` prefix on each line as
the syslog priority (sd-daemon(3): ``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>``
debug), so ``journalctl -p err -u facediag`` then shows exactly the errors. Without the
prefix every line is logged at the default priority (info).

The prefix is added only when stderr *is* that journal stream (device and inode match):
a child process that inherited the variable but writes to a terminal or a file keeps
plain lines. A multi-line record (a traceback) gets the prefix on every line, since the
journal stores each line as one entry.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import IO

# logging level -> syslog priority (sd-daemon.h: SD_CRIT 2, SD_ERR 3, SD_WARNING 4, SD_INFO 6, SD_DEBUG 7)
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    """The syslog priority for a logging level (anything below INFO is debug, 7)."""
    for level, priority in _PRIORITIES:
        if levelno >= level:
            return priority
    return 7


def stream_is_journal(stream: IO[str] | None = None, env: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` (default stderr) is the journal stream named by ``$JOURNAL_STREAM``."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


class JournalFormatter(logging.Formatter):
    """Prefixes every line of a record with its ``<N>`` syslog priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def use_journal_priorities(fmt: str = "%(levelname)s %(name)s: %(message)s",
                           logger: logging.Logger | None = None) -> bool:
    """When stderr is the journal, give the stream handlers on ``logger`` (default root) a JournalFormatter.

    Returns whether it did. Call after ``logging.basicConfig``.
    """
    target = logger or logging.getLogger()
    changed = False
    for handler in target.handlers:
        stream = getattr(handler, "stream", None)
        if isinstance(handler, logging.StreamHandler) and stream is not None and stream_is_journal(stream):
            handler.setFormatter(JournalFormatter(fmt))
            changed = True
    return changed
