/**
 * The lifecycle actions a health report offers, what each does and keeps, and how each is
 * asked for. Anything that loses work asks first; a delete that the daemon refuses because
 * of unsaved work (409) shows that work and offers the forced delete.
 */

import { ApiError, api } from "./api";
import { h } from "./dom";
import type { Action, Session } from "./types";
import { confirmDialog, dialog } from "./ui";

interface ActionInfo {
  label: string;
  /** Shown while it runs: "Recreating…". */
  running: string;
  description: string;
  method: "POST" | "DELETE";
  path: string;
}

export const ACTIONS: Record<Action, ActionInfo> = {
  start: {
    label: "Start",
    running: "Starting…",
    description: "Start the stopped container again.",
    method: "POST",
    path: "start",
  },
  recreate: {
    label: "Recreate",
    running: "Recreating…",
    description: "A new container on the same worktree; the agent resumes its conversation.",
    method: "POST",
    path: "recreate",
  },
  recreate_fresh: {
    label: "Recreate fresh",
    running: "Recreating from the base branch…",
    description:
      "A new worktree from the base branch and a new container. Uncommitted changes are lost; " +
      "commits found on no other branch are kept on a renamed branch.",
    method: "POST",
    path: "recreate-fresh",
  },
  refresh: {
    label: "Refresh image",
    running: "Refreshing…",
    description: "Resolve the image again (pulling it if a registry answers), then recreate.",
    method: "POST",
    path: "refresh",
  },
  archive: {
    label: "Archive",
    running: "Archiving…",
    description: "Remove the container; keep the worktree, branch and chat for later.",
    method: "POST",
    path: "archive",
  },
  unarchive: {
    label: "Unarchive",
    running: "Unarchiving…",
    description: "A new container on the kept worktree; the agent resumes its conversation.",
    method: "POST",
    path: "unarchive",
  },
  cleanup: {
    label: "Clean up",
    running: "Cleaning up…",
    description: "Remove this broken session's container, worktree and record. Its branch stays.",
    method: "POST",
    path: "cleanup",
  },
  delete: {
    label: "Delete",
    running: "Deleting…",
    description:
      "Remove the container, worktree and record. The branch is kept; the daemon refuses if " +
      "there is work on no other branch unless you confirm again.",
    method: "DELETE",
    path: "",
  },
};

/** Actions in the order they are offered on screen: the gentle ones first. */
export const ACTION_ORDER: Action[] = [
  "start",
  "unarchive",
  "recreate",
  "refresh",
  "archive",
  "recreate_fresh",
  "cleanup",
  "delete",
];

/** A button's look: the recommended action stands out, one that loses work is red. */
export function actionClass(action: Action, recommended: boolean, keeps: boolean | undefined) {
  if (recommended) return "button primary";
  return action === "delete" || keeps === false ? "button danger-outline" : "button plain";
}

export function keepsText(keeps: boolean | undefined): string {
  if (keeps === true) return "Keeps the worktree's files and the conversation.";
  if (keeps === false) return "Loses the worktree's uncommitted files and the conversation.";
  return "";
}

function unsavedWork(details: unknown): HTMLElement | null {
  const repos = (details as { repositories?: unknown })?.repositories;
  if (!Array.isArray(repos)) return null;
  return h(
    "ul",
    { class: "unsaved" },
    repos.map((repo) => {
      const r = repo as {
        mount_name?: string;
        worktree_path?: string;
        uncommitted?: string[];
        unique_commits?: number;
      };
      const changes = r.uncommitted ?? [];
      return h(
        "li",
        null,
        h("strong", null, r.mount_name ?? "repository"),
        r.worktree_path ? h("span", { class: "muted" }, ` (${r.worktree_path})`) : null,
        h(
          "p",
          null,
          `${changes.length} uncommitted change${changes.length === 1 ? "" : "s"}, ` +
            `${r.unique_commits ?? 0} commit${r.unique_commits === 1 ? "" : "s"} on no other branch`,
        ),
        changes.length ? h("pre", { class: "unsaved-files" }, changes.join("\n")) : null,
      );
    }),
  );
}

/**
 * Ask (where work may be lost) and run ``action``. Resolves with the session as the daemon
 * answered it, or null if the user cancelled. API errors are thrown for the caller to show.
 */
export async function runAction(
  session: Session,
  action: Action,
  keeps: boolean | undefined,
): Promise<Session | null> {
  const info = ACTIONS[action];
  const base = `/api/sessions/${encodeURIComponent(session.id)}`;
  if (action === "delete") return deleteSession(session, base);
  if (keeps === false || action === "cleanup") {
    const ok = await confirmDialog(
      `${info.label} “${session.name}”?`,
      [
        h("p", null, info.description),
        h("p", { class: "warning" }, keepsText(keeps) || "This cannot be undone."),
      ],
      info.label,
      true,
    );
    if (!ok) return null;
  }
  const answer = await api.post<{ session: Session }>(`${base}/${info.path}`);
  return answer.session;
}

async function deleteSession(session: Session, base: string): Promise<Session | null> {
  const ok = await confirmDialog(
    `Delete “${session.name}”?`,
    [
      h("p", null, "The container, the worktree and the session's record are removed."),
      h("p", null, `The branch ${session.branch_name} is kept, with every commit on it.`),
    ],
    "Delete",
    true,
  );
  if (!ok) return null;
  try {
    return (await api.delete<{ session: Session }>(base)).session;
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 409) throw error;
    const work = unsavedWork(error.details);
    if (!work) throw error; // a conflict of another kind (an action under way): show it
    const force = await dialog(
      "This session has unsaved work",
      [
        h("p", { class: "warning" }, error.message),
        work,
        h(
          "p",
          null,
          "Deleting anyway loses the uncommitted changes. Commits stay on the branch " +
            `${session.branch_name}, which is never deleted.`,
        ),
      ],
      [
        { label: "Keep the session", value: false, autofocus: true },
        { label: "Delete anyway", value: true, kind: "danger" },
      ],
      false,
    );
    if (!force) return null;
    return (await api.delete<{ session: Session }>(`${base}?force=true`)).session;
  }
}
