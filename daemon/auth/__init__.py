"""Sign-in: WebAuthn passkeys for browsers, API tokens for scripts (PROTOCOL.md, "Security").

``service`` holds the state and the ceremonies, ``store`` the queries on the daemon's SQLite
store, ``handlers`` the REST routes, ``limits`` which calls count against which rate limit,
``middleware`` the check every request passes and ``setup`` wires them into the app.
With ``auth.mode = "none"`` all of it stands aside.
"""
