"""The ``docker`` marker is honest: only tests marked with it reach an engine or an image.

``pytest -m "not docker"`` must pass on a machine without a Docker engine. The suite keeps
that true on a machine with one: tests not marked ``docker`` run with ``DOCKER_HOST`` at a
socket nothing serves (see ``tests/conftest.py``), their ``settings`` name an image that is
never built, and asking for a test image without the marker fails before it is built.
"""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from daemon.settings import Settings
from tests.conftest import ROOT, UNBUILT_IMAGE


def engine_answers() -> bool:
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    except FileNotFoundError:  # a machine without an engine may have no docker client either
        return False
    return info.returncode == 0


@pytest.mark.parametrize(
    "marked", [pytest.param(True, marks=pytest.mark.docker), pytest.param(False)]
)
def test_only_tests_marked_docker_reach_the_engine(marked: bool) -> None:
    assert engine_answers() is marked


def test_settings_of_a_test_not_marked_docker_build_no_image(
    settings: Settings, request: pytest.FixtureRequest
) -> None:
    assert "busybox_image" not in request.fixturenames
    assert settings.docker.default_image == UNBUILT_IMAGE


def test_a_test_image_without_the_docker_marker_fails_before_it_is_built(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest("from tests.conftest import *  # noqa: F403\n")
    pytester.makeini(
        textwrap.dedent(
            f"""
            [pytest]
            pythonpath = {ROOT}
            markers = docker: needs the engine
            """
        )
    )
    pytester.makepyfile(
        test_inner="""
        import pytest

        def test_unmarked(busybox_image):
            pass

        @pytest.mark.docker
        def test_marked(busybox_image):
            assert busybox_image == "corral-test-busybox:given"
        """
    )
    # A tag from the environment: the marked test is served without any engine.
    monkeypatch.setenv("CORRALTEST_BUSYBOX_IMAGE", "corral-test-busybox:given")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*test_unmarked uses busybox_image but is not marked docker*"])
