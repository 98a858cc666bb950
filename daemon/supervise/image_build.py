"""When to build the default agent image: at start, or as soon as the engine answers.

One task under the task supervisor: it looks at the engine (one image inspection) and,
when the default image is missing and a recipe can build it, starts the build
(``daemon/core/image_build.py`` runs it). While the engine does not answer it looks again
every ``interval`` seconds; once the image is there, being built, or cannot be built here,
it is done. A session created later with the image missing starts the build itself, so a
failed build is retried by the next create, never in a loop.
"""

from __future__ import annotations

import asyncio

import structlog

from daemon.core.image_build import Found, ImageBuilder
from daemon.core.tasks import SUPERVISE, TaskSupervisor

log = structlog.get_logger(__name__)

ENGINE_RETRY_SECONDS = 15.0


class ImageWatch:
    def __init__(
        self, builder: ImageBuilder, tasks: TaskSupervisor, interval: float = ENGINE_RETRY_SECONDS
    ) -> None:
        self.builder = builder
        self.tasks = tasks
        self.interval = interval

    def start(self) -> None:
        self.tasks.spawn(self._run(), name="image-watch", group=SUPERVISE)

    async def _run(self) -> None:
        if self.builder.engine is None:  # no docker backend in this daemon
            return
        found = await self.builder.ensure()
        while found is Found.NO_ENGINE:  # no event says the engine is back: look again
            await asyncio.sleep(self.interval)
            found = await self.builder.ensure()
        if found is Found.NO_RECIPE:
            log.warning("default_image_missing", image=self.builder.image, fix=self.builder.fix())
