"""``corral merge``, ``push`` and ``pr``: land a session's work from the terminal, through
the daemon's API (daemon/core/changes_models.py has the shapes); ``corral diff`` is in
client/diffview.py. A merge's verdict, refusals included, goes to stdout with what was
kept; other refusals are one line on stderr.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from client import diffview
from client.sessions_cli import (
    EXIT_FAILED,
    EXIT_OK,
    Api,
    ApiRefusal,
    CliError,
    add_connection,
    clean,
    describe_pr,
    run_command,
)
from daemon.core.changes_models import (
    AskAgentRequest,
    AskAgentResult,
    MergeRequest,
    MergeResult,
    PullRequest,
    PullRequestRequest,
    PushRequest,
    PushResult,
)

MAX_REMOTE_LINES = 40


def _body(model: type[BaseModel], **fields: Any) -> dict[str, Any]:
    """The request body, checked here first so that bad flags fail before the daemon."""
    try:
        return model(**fields).model_dump(mode="json", exclude_none=True)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise CliError(f"{where}: {problem['msg']}") from None


def _short(commit: str | None) -> str:
    return clean(commit[:12]) if commit else "?"


def refusal_reason(result: MergeResult, branch: str) -> str:
    """Why the merge was refused, and what it would have lost, in a sentence."""
    target = clean(result.target_branch)
    reasons = {
        "uncommitted_changes": (
            "the session has uncommitted changes that merging its commits would leave "
            "behind; commit them in the session, or pass --commit-uncommitted"
        ),
        "conflicts": (
            f"{branch} conflicts with {target} in {len(result.conflicts)} "
            f"file{'s' if len(result.conflicts) != 1 else ''}; --ask-agent asks the agent to "
            f"rebase onto {target} and resolve them, then try again"
        ),
        "target_dirty": (
            f"{target} is checked out"
            + (f" in {clean(result.target_worktree)}" if result.target_worktree else "")
            + " with local changes that updating it would overwrite; commit or stash them "
            "there first"
        ),
        "branch_moved": (
            f"{branch} moved during the merge (the agent committed?); its new commits would "
            "have been left out, so nothing was changed: try again"
        ),
        "target_moved": (
            f"{target} moved during the merge (it was {_short(result.target_before)}); its new "
            "commits would have been lost, so nothing was changed: try again"
        ),
        "not_fast_forward": (
            f"{target} has commits that {branch} lacks, which a fast-forward would drop; "
            "use a merge, --squash or --rebase"
        ),
        "nothing_to_merge": f"{target} already has every commit of {branch}: nothing to merge",
    }
    return reasons.get(result.refusal or "", "the daemon refused the merge")


def print_merge(result: MergeResult, branch: str) -> int:
    """The verdict on stdout; 0 when it merged (or would, on a dry run), else 1."""
    target = clean(result.target_branch)
    how = f"({result.strategy}{', dry run' if result.dry_run else ''})"
    lines: list[str] = []
    ok = result.clean and result.refusal is None
    if result.dry_run and ok:
        lines.append(f"{branch} merges cleanly into {target} {how}; nothing was changed")
    elif ok:
        lines.append(
            f"merged {branch} into {target} {how}: "
            f"{_short(result.target_before)} -> {_short(result.target_after)}"
        )
        if result.backup_ref:
            lines.append(f"backup of {target} before the merge: {clean(result.backup_ref)}")
        if result.committed_uncommitted:
            lines.append(
                f"the session's uncommitted work was committed first: "
                f"{_short(result.committed_uncommitted)}"
            )
        if result.updated_checkout:
            lines.append(f"updated your checkout of {target}: {clean(result.updated_checkout)}")
    elif result.refusal is None:
        lines.append(f"{branch} does not merge cleanly into {target} {how}")
    else:
        lines.append(f"merge refused {how}: {refusal_reason(result, branch)}")
    if result.conflicts:
        lines.append("conflicting files:")
        lines += [f"  {clean(path)}" for path in result.conflicts]
    if result.uncommitted and not ok:
        lines.append("uncommitted in the session (the merge would leave these out):")
        lines += [f"  {clean(line)}" for line in result.uncommitted]
    if result.kept:
        lines.append(clean(result.kept))
    print("\n".join(lines))
    return EXIT_OK if ok else EXIT_FAILED


def _branch_of(session: Mapping[str, Any], mount: str | None) -> str:
    for repo in session.get("repositories", []):
        if repo.get("mount_name") == mount or (mount is None and repo.get("is_primary")):
            return clean(repo.get("branch_name", ""))
    return clean(session.get("branch_name", "the session's branch"))


async def ask_agent(api: Api, args: argparse.Namespace) -> int:
    """Hand what keeps the branch from merging to the agent, as a message."""
    body = _body(
        AskAgentRequest, strategy=args.strategy, repository=args.repository, target_branch=args.into
    )
    session = await api.resolve(args.session)
    url = api.path("api", "sessions", str(session["id"]), "merge", "ask-agent")
    sent = AskAgentResult.model_validate(await api.call("POST", url, body=body))
    print(f"asked the agent to resolve {len(sent.conflicts)} conflicting files; it was sent:")
    print("\n".join(f"  {clean(line)}" for line in sent.message.splitlines()))
    return EXIT_OK


async def merge(api: Api, args: argparse.Namespace) -> int:
    if args.ask_agent:
        return await ask_agent(api, args)
    body = _body(
        MergeRequest,
        strategy=args.strategy,
        repository=args.repository,
        target_branch=args.into,
        message=args.message,
        dry_run=args.dry_run,
        commit_uncommitted=args.commit_uncommitted,
    )
    session = await api.resolve(args.session)
    url = api.path("api", "sessions", str(session["id"]), "merge")
    try:
        answer = await api.call("POST", url, body=body)
    except ApiRefusal as exc:
        if exc.http_status != 409 or not isinstance(exc.details, dict):
            raise
        try:
            refused = MergeResult.model_validate(exc.details)
        except ValidationError:
            raise exc from None
        answer = refused.model_dump(mode="json")
    result = MergeResult.model_validate(answer)
    return print_merge(result, _branch_of(session, result.mount_name))


async def push(api: Api, args: argparse.Namespace) -> int:
    body = _body(
        PushRequest,
        repository=args.repository,
        remote=args.remote,
        set_upstream=not args.no_set_upstream,
    )
    session = await api.resolve(args.session)
    url = api.path("api", "sessions", str(session["id"]), "push")
    result = PushResult.model_validate(await api.call("POST", url, body=body))
    print(f"pushed {clean(result.branch)} ({_short(result.commit)}) to {clean(result.remote)}")
    said = result.output.strip().splitlines()
    for line in said[:MAX_REMOTE_LINES]:
        print(f"  {clean(line)}")
    if len(said) > MAX_REMOTE_LINES:
        print(f"  ... {len(said) - MAX_REMOTE_LINES} more lines")
    return EXIT_OK


async def pr(api: Api, args: argparse.Namespace) -> int:
    session = await api.resolve(args.session)
    url = api.path("api", "sessions", str(session["id"]), "pull-request")
    if args.show:
        query = {"repository": args.repository} if args.repository else {}
        try:
            answer = await api.call("GET", url, query=query)
        except ApiRefusal as exc:
            if exc.http_status == 404 and exc.code == "NOT_FOUND":
                print("no pull request yet (corral pr <session> opens one)")
                return EXIT_FAILED
            raise
        print(describe_pr(PullRequest.model_validate(answer).model_dump(mode="json")))
        return EXIT_OK
    body = _body(
        PullRequestRequest,
        repository=args.repository,
        title=args.title,
        body=args.body,
        draft=args.draft,
        base=args.base,
        generate=args.generate,
    )
    opened = PullRequest.model_validate(await api.call("POST", url, body=body))
    print(f"pull request #{opened.number}{' (draft)' if opened.draft else ''}: {clean(opened.url)}")
    print(f"  {clean(opened.title)}")
    print(f"  {clean(opened.head)} -> {clean(opened.base)}")
    return EXIT_OK


def _runner(work: Any) -> Any:
    return lambda a: run_command(lambda api: work(api, a), a.url)


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    one = "id, unique id prefix, or name"
    diffview.add_parser(commands)

    parser = commands.add_parser("merge", help="merge a session's branch into its base")
    parser.add_argument("session", help=one)
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--squash", dest="strategy", action="store_const", const="squash")
    how.add_argument("--rebase", dest="strategy", action="store_const", const="rebase")
    how.add_argument("--ff-only", dest="strategy", action="store_const", const="fast-forward")
    parser.set_defaults(strategy="merge")
    parser.add_argument("--dry-run", action="store_true", help="say whether it merges cleanly")
    parser.add_argument("--into", metavar="BRANCH", help="target branch (default: the base)")
    parser.add_argument(
        "--commit-uncommitted", action="store_true", help="commit the session's changes first"
    )
    parser.add_argument("-m", "--message", help="the merge or squash commit's message")
    parser.add_argument(
        "--ask-agent",
        action="store_true",
        help="instead of merging: ask the agent to rebase and resolve the conflicts",
    )
    parser.add_argument("--repository", metavar="MOUNT", help="default: the primary")
    add_connection(parser)
    parser.set_defaults(handler=_runner(merge))

    parser = commands.add_parser("push", help="push a session's branch")
    parser.add_argument("session", help=one)
    parser.add_argument("--remote", help="default: origin")
    parser.add_argument("--repository", metavar="MOUNT", help="default: the primary")
    parser.add_argument("--no-set-upstream", action="store_true")
    add_connection(parser)
    parser.set_defaults(handler=_runner(push))

    parser = commands.add_parser("pr", help="open (or --show) a session's pull request")
    parser.add_argument("session", help=one)
    parser.add_argument("--title")
    parser.add_argument("--body")
    parser.add_argument("--draft", action="store_true")
    parser.add_argument("--base", metavar="BRANCH", help="default: the base branch")
    parser.add_argument("--generate", action="store_true", help="the model writes title, body")
    parser.add_argument("--show", action="store_true", help="show the open one instead")
    parser.add_argument("--repository", metavar="MOUNT", help="default: the primary")
    add_connection(parser)
    parser.set_defaults(handler=_runner(pr))
