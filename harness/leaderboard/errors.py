"""What ``harness leaderboard`` ends with when nothing can be ranked as asked."""

from __future__ import annotations

from harness.core.errors import UserError


class LeaderboardError(UserError):
    """Nothing can be ranked as asked (exit code 2 on the command line)."""


class NoRunsError(LeaderboardError):
    """The experiment (or comparison) has no FINISHED run to rank."""


class MixedBudgetsError(LeaderboardError):
    """Finished runs carry more than one budget id and none was selected."""

    def __init__(self, message: str, budget_ids: dict[str, int]):
        super().__init__(message)
        self.budget_ids = budget_ids
