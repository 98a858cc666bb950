# corral's own image: the daemon, driving the HOST's Docker engine through its socket.
# (The default agent image that sessions run in is images/agent/, built by its build.sh.)
#
#   docker build -t corral .                      # build web/dist first if you want the UI
#   docker run -d --name corral --network host \
#     --user "$(id -u):$(id -g)" --group-add "$(stat -c %g /var/run/docker.sock)" \
#     -e HOME="$HOME" -e CORRAL_DATA_DIR="$HOME/.local/share/corral" \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     -v "$HOME/.local/share/corral:$HOME/.local/share/corral" \
#     -v "$HOME/src:$HOME/src" \
#     corral
#
# Paths must be the SAME inside and outside: the daemon tells the host's engine to mount
# worktrees, agent homes and your repositories' .git by the paths it sees itself, so mount
# the data dir and the folders holding your repositories at their own paths. --network host
# keeps the default loopback bind (127.0.0.1:3030) reachable from the host only; a
# non-loopback bind is refused unless authentication is on. Running as your uid:gid keeps
# worktree files yours and lets agents run as non-root (use --user 0 to run as root).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="corral" \
      org.opencontainers.image.description="corral daemon: AI coding agents in Docker containers on git worktrees"

# git for worktrees; repositories mounted from the host belong to another uid.
RUN set -eu; \
    if ! command -v git >/dev/null 2>&1; then \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends git ca-certificates; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    git config --system --add safe.directory '*'

# The project lives in /opt/corral (the daemon serves web/ from beside its package) and is
# installed into its own venv, which works with the official Python image and with a
# Debian python3 alike.
COPY . /opt/corral
RUN python3 -m venv /opt/corral/.venv \
    && /opt/corral/.venv/bin/pip install --no-cache-dir --disable-pip-version-check -q -e /opt/corral \
    && /opt/corral/.venv/bin/corral --version
ENV PATH=/opt/corral/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1

EXPOSE 3030
ENTRYPOINT ["corral", "serve"]
