"""The tasks service: task definitions and members' progress in them, the points ledger, rewards and
redemption, leaderboards, levels and the tasks feed (see docs/tasks.md)."""
