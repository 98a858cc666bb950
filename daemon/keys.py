"""Typed application keys: everything the app holds, in one place."""

from __future__ import annotations

from aiohttp import web

from backends.base import Backend
from daemon.auth.service import Auth, Principal
from daemon.core.console import Consoles
from daemon.core.github import PullRequestStore
from daemon.core.hub import EventHub
from daemon.core.manager import SessionManager
from daemon.core.store import Store
from daemon.core.tasks import TaskSupervisor
from daemon.credentials.service import Credentials
from daemon.gateway.server import ModelGateway
from daemon.settings import Settings
from daemon.supervise.reconcile import Reconciler
from ws.connection import OpenSockets

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
HUB = web.AppKey("hub", EventHub)
BACKENDS = web.AppKey("backends", dict[str, Backend])
MANAGER = web.AppKey("manager", SessionManager)
RECONCILER = web.AppKey("reconciler", Reconciler)
TASKS = web.AppKey("tasks", TaskSupervisor)
LIST_CACHE = web.AppKey("list_cache", dict[tuple[object, ...], bytes])
CONSOLES = web.AppKey("consoles", Consoles)
SOCKETS = web.AppKey("sockets", OpenSockets)
AUTH = web.AppKey("auth", Auth)
CREDENTIALS = web.AppKey("credentials", Credentials)
GATEWAY = web.AppKey("gateway", ModelGateway)
PULL_REQUESTS = web.AppKey("pull_requests", PullRequestStore)
# Who signed a request in (set by the auth middleware when auth is on and it is valid).
PRINCIPAL = web.RequestKey("principal", Principal)
