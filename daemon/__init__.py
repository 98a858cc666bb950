"""corral daemon: runs AI coding agents in isolated containers on git worktrees."""

__version__ = "0.1.0"
