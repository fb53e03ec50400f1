"""Evaluation tasks, one module per family, registered under the entry-point group
``harness.tasks`` (built-ins included, see pyproject.toml). The interface and the registry live in
:mod:`harness.core.task`; they are re-exported here."""

from harness.core.registry import UnknownNameError
from harness.core.task import (
    TASKS,
    EmbeddingCache,
    EvalContext,
    Suite,
    Task,
    TaskDeclarationError,
    TaskMeta,
    TaskResult,
    register,
)

__all__ = [
    "TASKS",
    "register",
    "Task",
    "Suite",
    "TaskMeta",
    "TaskDeclarationError",
    "TaskResult",
    "EvalContext",
    "EmbeddingCache",
    "UnknownNameError",
]
