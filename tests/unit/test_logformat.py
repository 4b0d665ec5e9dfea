"""shoal/logformat.py: shoald's text and JSON log lines name the component, the node, the
service and the task."""

from __future__ import annotations

import json
import logging
import sys

from shoal.logformat import ContextFilter, JSONFormatter, TextFormatter


def record(msg: str = "task %s running", args: tuple[object, ...] = ("t1",),
           exc_info: object = None, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("worker.task_manager", logging.INFO, __file__, 1, msg, args,
                            exc_info)  # type: ignore[arg-type]
    rec.__dict__.update(extra)
    ContextFilter(lambda: "own-node").filter(rec)
    return rec


def test_json_line_has_every_field() -> None:
    line = json.loads(JSONFormatter().format(record(service="s1", task="t1")))
    assert line.pop("time").endswith("Z")
    assert line == {"level": "info", "component": "worker.task_manager",
                    "msg": "task t1 running", "node": "own-node", "service": "s1",
                    "task": "t1"}


def test_json_without_context_has_nulls_and_a_call_may_name_another_node() -> None:
    line = json.loads(JSONFormatter().format(record("x", (), node="other")))
    assert (line["node"], line["service"], line["task"]) == ("other", None, None)
    before_join = logging.LogRecord("shoald", logging.WARNING, __file__, 1, "hi", None, None)
    ContextFilter().filter(before_join)
    assert json.loads(JSONFormatter().format(before_join))["node"] is None


def test_json_carries_the_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record("failed", (), exc_info=sys.exc_info())
    line = json.loads(JSONFormatter().format(rec))
    assert "ValueError: boom" in line["error"]


def test_text_line_names_component_and_context() -> None:
    text = TextFormatter().format(record(service="s1", task="t1"))
    assert text.endswith(" INFO worker.task_manager [node=own-node service=s1 task=t1]: "
                         "task t1 running")
    assert " INFO worker.task_manager: x" in TextFormatter().format(
        logging.LogRecord("worker.task_manager", logging.INFO, __file__, 1, "x", None, None))
