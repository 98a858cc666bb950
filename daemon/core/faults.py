"""The journal's fault hook: what a test installs on the store to act at a journaled step.

The store holds one ``JournalHook`` or none (``Store.journal_hook``, ``None`` in
production, where the journal only checks that it is unset). The crash tests install one
that makes the daemon SIGKILL itself right after a chosen step is durable
(``tests/crash_daemon.py``), so every gap between two side effects can be hit.
"""

from __future__ import annotations

from typing import Protocol


class JournalHook(Protocol):
    def journal_step(self, kind: str, step: str) -> None:
        """``step`` of a ``kind`` operation is stored, its side effect not yet done;
        ``end`` comes after the last side effect, before the operation is marked done."""
