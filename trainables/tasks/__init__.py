"""The task registry: name -> Task (see docs/method.md, 'Data')."""

from __future__ import annotations

from trainables.errors import LnsubError
from trainables.tasks.base import Task
from trainables.tasks.mlm import MLM
from trainables.tasks.ner import NER
from trainables.tasks.xnli import XNLI

TASKS: dict[str, Task] = {t.name: t for t in (MLM(), NER(), XNLI())}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise LnsubError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


__all__ = ["TASKS", "Task", "get_task"]
