"""Supervisors: tasks that watch sessions and act on them (reconciliation, recovery, orphans, the
stall watchdog, agent state, metadata). They use the core; the HTTP layer uses them.
"""
