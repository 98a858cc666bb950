"""WebSocket transport: per-connection writer tasks, /ws/events and /ws/console."""
