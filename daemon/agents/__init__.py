"""Agents: how each agent CLI is started, resumed and read."""
