"""The default agent image, built on first use from its recipe, and sessions that wait for it.

The recipe is ``<agent_recipe()>/build-default.sh TAG`` (``daemon/resources.py``;
``CORRAL_AGENT_RECIPE`` overrides it). It prints ``corral-progress <step> <total> <message>``
lines on stdout and everything else on stderr. :class:`ImageBuilder` runs it as a
subprocess under the task supervisor (never blocking the loop, in a process group of its
own that is killed on shutdown), keeps the latest progress line and the last lines of
stderr (bounded), and wakes whoever waits for the image.

A session whose image is missing waits in ``creating`` while the default image is built
(:meth:`ImageBuilder.provide`), showing the build's step as its progress; when the image
cannot be had, the error names the command that makes it. Nothing here decides *when* to
build at start: ``daemon/supervise/image_build.py`` does (at start, when the engine comes back).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from backends.base import BackendError, Engine, ImageNotFound
from daemon.core.models import Progress
from daemon.core.tasks import SUPERVISE, TaskSupervisor
from daemon.resources import RECIPE_SCRIPT, agent_recipe
from daemon.settings import Settings

log = structlog.get_logger(__name__)

PROGRESS_PREFIX = "corral-progress"
WAITING = "Waiting for the agent image to be built"
STDERR_TAIL = 20  # lines of the recipe's stderr kept for the error
ERROR_LINES = 3  # of which the error shows the last few
LINE_LIMIT = 500  # characters kept of any one line
_KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL of the recipe's process group


class Found(enum.Enum):
    """What a look at the engine found (:meth:`ImageBuilder.ensure`)."""

    NO_ENGINE = "no_engine"  # no docker backend, or it does not answer
    PRESENT = "present"
    BUILDING = "building"
    NO_RECIPE = "no_recipe"  # missing, and nothing here can build it


def build_command(image: str, recipe: Path | None, *, default: bool = True) -> str:
    """The one command that makes ``image`` present, for messages and fixes: the recipe for
    the default image (named as in a checkout when none is found here), a pull otherwise."""
    if not default:
        return f"docker pull {image}"
    if recipe is None:
        return f"images/agent/{RECIPE_SCRIPT} {image} (in a corral checkout)"
    return f"bash {recipe / RECIPE_SCRIPT} {image}"


def parse_progress(line: str) -> Progress | None:
    """``corral-progress <step> <total> <message>`` as a Progress; anything else is None."""
    parts = line.strip().split(maxsplit=3)
    if len(parts) < 3 or parts[0] != PROGRESS_PREFIX:
        return None
    try:
        step, total = int(parts[1]), int(parts[2])
    except ValueError:
        return None
    message = parts[3] if len(parts) > 3 else ""
    return Progress(step=step, total=total, message=message[:LINE_LIMIT])


class ImageBuilder:
    """The default image's state (present, building with progress, the last error) and its
    one build at a time."""

    def __init__(self, settings: Settings, engine: Engine | None, tasks: TaskSupervisor) -> None:
        self.image = settings.docker.default_image
        self._docker_url = settings.docker.url
        self.engine = engine
        self._tasks = tasks
        self.building = False
        self.progress: Progress | None = None
        self.error: str | None = None
        self._changed = asyncio.Event()

    @staticmethod
    def recipe() -> Path | None:
        return agent_recipe()

    def fix(self, image: str | None = None) -> str:
        """The command that makes ``image`` (the default one if not given) present."""
        image = image or self.image
        return build_command(image, self.recipe(), default=image == self.image)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def ensure(self) -> Found:
        """Look at the engine; start a build when the default image is missing."""
        if self.building:
            return Found.BUILDING
        if self.engine is None:
            return Found.NO_ENGINE
        try:
            if await self.engine.image_exists(self.image):
                return Found.PRESENT
        except BackendError:
            return Found.NO_ENGINE
        return Found.BUILDING if self.start_build() else Found.NO_RECIPE

    def start_build(self) -> bool:
        """Start the recipe unless it runs already; False when there is no recipe."""
        if self.building:
            return True
        recipe = self.recipe()
        if recipe is None:
            return False
        self.building, self.progress, self.error = True, None, None
        self._tasks.spawn(self._build(recipe), name=f"image-build:{self.image}", group=SUPERVISE)
        self._notify()
        return True

    async def provide(self, image: str, note: Callable[[str], Awaitable[None]]) -> None:
        """For a session whose ``image`` the engine does not have: wait for the default
        image's build (``note`` shows each of its steps), or raise :class:`ImageNotFound`
        naming the command that makes the image."""
        if image != self.image or (not self.building and self.recipe() is None):
            raise ImageNotFound(
                f"image {image} is not present: make it with `{self.fix(image)}`, then try again",
                details={"image": image, "fix": self.fix(image)},
            )
        if not self.building:
            if self.engine is not None and await self.engine.image_exists(image):
                return  # built meanwhile
            self.start_build()  # a later create retries a build that failed
        while self.building:
            changed = self._changed
            step = self.progress.message if self.progress else "starting"
            await note(f"{WAITING}: {step}")
            await changed.wait()
        if self.error is not None:
            raise ImageNotFound(
                f"the agent image {image} could not be built ({self.error}); run "
                f"`{self.fix(image)}` to see why, then try again",
                details={"image": image, "fix": self.fix(image), "error": self.error},
            )

    # the build

    async def _build(self, recipe: Path) -> None:
        script = recipe / RECIPE_SCRIPT
        loop = asyncio.get_running_loop()
        started = loop.time()
        log.info("image_build_started", image=self.image, recipe=str(script))
        env = dict(os.environ)
        if self._docker_url:  # the recipe's docker client talks to the daemon's engine
            env["DOCKER_HOST"] = self._docker_url
        tail: deque[str] = deque(maxlen=STDERR_TAIL)
        error: str | None = "the build was stopped"  # what a cancellation leaves
        try:
            error = await self._run(script, env, tail)
            built = error is None and self.engine is not None
            if built and self.engine is not None and not await self.engine.image_exists(self.image):
                error = f"{script} exited 0 but no image {self.image} exists"
        except BackendError as exc:
            error = f"cannot check the built image: {exc.message}"
        finally:
            duration = round(loop.time() - started, 1)
            if error is None:
                log.info("image_build_done", image=self.image, duration_s=duration)
            else:
                log.warning(
                    "image_build_failed", image=self.image, duration_s=duration, error=error
                )
            self.building, self.error = False, error
            self.progress = None
            self._notify()

    async def _run(self, script: Path, env: dict[str, str], tail: deque[str]) -> str | None:
        """Run the recipe to its end; the error, or None when it succeeded."""
        try:
            proc = await asyncio.create_subprocess_exec(
                "bash",
                str(script),
                self.image,
                cwd=script.parent,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                # Its own process group: a shutdown stops the recipe and all it started.
                start_new_session=True,
            )
        except OSError as exc:
            return f"cannot run {script}: {exc.strerror or exc}"
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            await asyncio.gather(
                _lines(proc.stdout, self._on_stdout), _lines(proc.stderr, tail.append)
            )
            code = await proc.wait()
        except asyncio.CancelledError:
            await _kill_group(proc)
            raise
        if code == 0:
            return None
        last = " | ".join(list(tail)[-ERROR_LINES:]) or "no output on stderr"
        return f"{script.name} exited with {code}: {last}"

    def _on_stdout(self, line: str) -> None:
        progress = parse_progress(line)
        if progress is not None:
            self.progress = progress
            log.info(
                "image_build_step",
                image=self.image,
                step=progress.step,
                total=progress.total,
                message=progress.message,
            )
            self._notify()


async def _lines(stream: asyncio.StreamReader, take: Callable[[str], None]) -> None:
    """Each line of ``stream`` (cut to LINE_LIMIT) to ``take``, until it ends."""
    while True:
        try:
            raw = await stream.readline()
        except ValueError:  # a line over the reader's limit: dropped, the rest goes on
            continue
        if not raw:
            return
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            take(line[:LINE_LIMIT])


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the recipe's process group, give it a grace, then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_KILL_GRACE):
            await proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children the recipe left behind, too
    await proc.wait()
