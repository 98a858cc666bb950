"""Clients of the daemon that run on the user's side: `corral attach` (and the coming CLI
commands). They speak the protocol and import nothing of the server but shared constants.
"""
