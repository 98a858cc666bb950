"""The session core: the domain model, the store, the event hub, sessions and their actions, git
and the agent homes, the console attachments, health. Imports nothing from the layers above it
(supervise, http, ws).
"""
