"""The model gateway (and, beside it, the egress proxy): how agents reach the outside.

``server.ModelGateway`` is the gateway; ``ports`` keeps the listeners' ports across
restarts. See ``daemon/core/access.py`` for the parts they are given.
"""
