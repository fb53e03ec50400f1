"""Evaluation tasks, registered under the entry-point group ``harness.tasks``."""

from __future__ import annotations

from harness.registry import Registry, UnknownNameError

from .base import EmbeddingCache, EvalContext, Suite, Task, TaskResult

TASKS: Registry[Task] = Registry("task", "harness.tasks", base=Task)
register = TASKS.register

__all__ = ["TASKS", "register", "Task", "Suite", "TaskResult", "EvalContext", "EmbeddingCache", "UnknownNameError"]
