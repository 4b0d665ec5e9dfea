"""shoald's log lines (`--log-format text|json`): each names its component (the logger's
name) and, where there is one, the node, the service and the task.

The node is the daemon's own node (a filter asks the running node for its ID; none before
it joins a swarm) unless the log call names another one (`extra={"node": ID}`, e.g. the
dispatcher about a node it marks down). Service and task come from the call:
`log.info("...", extra={"service": ID, "task": ID})`.

JSON lines hold {"time", "level", "component", "msg", "node", "service", "task"} (null
where there is none) and "error" with the traceback when there is one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
FIELDS = ("node", "service", "task")


class ContextFilter(logging.Filter):
    """Gives every record `node`, `service` and `task` attributes (None when unknown)."""

    def __init__(self, node_id: Callable[[], str | None] = lambda: None) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "node", None):
            record.node = self.node_id()
        for name in ("service", "task"):
            if not getattr(record, name, None):
                setattr(record, name, None)
        return True


def _context(record: logging.LogRecord) -> dict[str, str | None]:
    return {name: getattr(record, name, None) or None for name in FIELDS}


class TextFormatter(logging.Formatter):
    """`2026-01-02 10:00:00,123 INFO manager.dispatcher [node=N task=T]: message`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        pairs = [f"{k}={v}" for k, v in _context(record).items() if v]
        record.context = f" [{' '.join(pairs)}]" if pairs else ""
        return super().format(record)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "component": record.name,
            "msg": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["error"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


def setup(fmt: str, level: str) -> ContextFilter:
    """Send the root logger's records to stderr in `fmt`; the returned filter is told the
    node's ID once the node exists."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: {' or '.join(FORMATS)}")
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    context = ContextFilter()
    handler.addFilter(context)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return context
