"""A daemon restart under a running agent: its container keeps the gateway URL and the
placeholder it was given, and both keep working (the port is remembered, the placeholder's
hash is stored, the gateway listens again on the sealed network's address)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from daemon.keys import TASKS
from tests.conftest import container_environment
from tests.model_server import Text, model_server_fixture
from tests.test_credentials_e2e import (
    REAL_ANTHROPIC_KEY,
    Rig,
    assistant_says,
    rig,
    subscribed,
)
from tests.test_egress import in_container

__all__ = ["model_server_fixture", "rig"]  # fixtures used by name

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]


async def test_a_running_agent_reaches_its_model_across_a_daemon_restart(rig: Rig) -> None:
    rig.settings.agents.anthropic_api_key = SecretStr(REAL_ANTHROPIC_KEY)
    rig.model_server.script(Text("before the restart"), Text("after the restart"))
    first, session = await rig.start(no_plan_mode=True, egress="allowlist")
    events = await subscribed(first, session["id"])
    await assistant_says(events, "before the restart")
    told = container_environment(session["container_id"])["ANTHROPIC_BASE_URL"]
    await events.ws.close()
    await first.app[TASKS].wait(timeout=30)
    await first.close()  # the daemon stops; the container and its agent do not

    second = await rig.daemon(rig.settings)
    listed = await (await second.get(f"/api/sessions/{session['id']}")).json()
    assert listed["session"]["container_id"] == session["container_id"]
    events = await subscribed(second, session["id"])
    # The new daemon answers on the address and port the container was told, seen from
    # inside the container (a HEAD is answered by the gateway itself).
    async with asyncio.timeout(30):
        while await in_container(session["container_id"], NODE_HEAD, told) != "200":
            await asyncio.sleep(0.2)
    sent = await second.post(
        f"/api/sessions/{session['id']}/message", json={"content": "still there?"}
    )
    assert sent.status == 202, await sent.text()
    await assistant_says(events, "after the restart")
    assert {c.headers.get("x-api-key") for c in rig.calls("/v1/messages")} == {REAL_ANTHROPIC_KEY}
    assert len(rig.model_server.requests) == 2


# Runs in the container: the status of a HEAD to the URL, or the connection's error code.
NODE_HEAD = """
const req = require('http').request(process.argv[1], {method: 'HEAD'},
  res => process.stdout.write(String(res.statusCode)));
req.on('error', e => process.stdout.write(String(e.code)));
req.setTimeout(3000, () => req.destroy(new Error('timeout')));
req.end();
"""
