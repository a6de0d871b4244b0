"""The task registry: name -> Task (see docs/method.md, 'Data')."""

from __future__ import annotations

from lnsub.trainables.errors import LnsubError
from lnsub.trainables.tasks.base import Task
from lnsub.trainables.tasks.lm import CLM, LMTask, XNLIZeroShot
from lnsub.trainables.tasks.mlm import MLM
from lnsub.trainables.tasks.ner import NER
from lnsub.trainables.tasks.xnli import XNLI

TASKS: dict[str, Task] = {t.name: t for t in (MLM(), NER(), XNLI(), CLM(), XNLIZeroShot())}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise LnsubError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


__all__ = ["TASKS", "LMTask", "Task", "get_task"]
