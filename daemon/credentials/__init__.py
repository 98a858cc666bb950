"""Where corral finds each agent's real credential, shows it masked and checks it.

The model gateway asks :class:`daemon.credentials.service.Credentials` for the credential
of an agent on every request; nothing else in a session ever sees it. Sources, first found
wins (the README's sign-in section cites this list):

1. **stored**: added from the UI or ``corral login`` (``<data_dir>/credentials.json``,
   mode 0600, written atomically);
2. **config**: ``agents.anthropic_api_key``, then ``credentials.claude_oauth_token`` for
   Claude; ``agents.openai_api_key`` for Codex;
3. **command**: ``credentials.claude_command`` / ``codex_command`` (a password manager),
   run without a shell, its answer kept for ``command_cache_seconds``;
4. **environment**: Claude ``ANTHROPIC_API_KEY``, then ``CLAUDE_CODE_OAUTH_TOKEN``; Codex
   ``OPENAI_API_KEY``;
5. **file**: Codex's ``credentials.codex_auth_file`` (``~/.codex/auth.json``) when it holds
   a ChatGPT sign-in or an ``OPENAI_API_KEY``; re-read when its mtime changes.

Modules: ``sources`` (kinds, the command and file sources), ``stored`` (the data dir's
file), ``chatgpt`` (a sign-in's tokens and their refresh), ``check`` (a cheap request per
kind), ``service`` (all of it behind one object), ``models`` (the API shapes).
"""
