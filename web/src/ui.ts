/**
 * Shared pieces of the page: notices (errors stay until dismissed, so none is missed),
 * modal dialogs built on <dialog> (focus is trapped and restored by the browser), badges.
 */

import { ApiError, errorMessage } from "./api";
import { type Children, h, replace, uid } from "./dom";
import type { AgentState, HealthState, SessionStatus } from "./types";

// --- errors --------------------------------------------------------------------------

/** The per-field problems of a 400 (PROTOCOL's details list) as a list, or null. */
export function problemList(error: unknown): HTMLElement | null {
  const items: HTMLElement[] = [];
  if (error instanceof ApiError && Array.isArray(error.details)) {
    for (const detail of error.details as { field?: string; message?: string }[]) {
      const field = detail.field ? h("code", null, detail.field) : null;
      items.push(h("li", null, field, " ", detail.message ?? ""));
    }
  }
  return items.length ? h("ul", null, items) : null;
}

// --- notices ---------------------------------------------------------------------------

let noticeArea: HTMLElement | null = null;

export function mountNotices(parent: HTMLElement): void {
  noticeArea = h("div", { class: "notices", "aria-live": "polite" });
  parent.append(noticeArea);
}

/** Show an error with the daemon's code and message; it stays until dismissed. */
export function showError(error: unknown, context?: string): void {
  const code = error instanceof ApiError ? error.code : null;
  const text = errorMessage(error);
  notice("error", context ? `${context}: ${text}` : text, code);
}

export function showInfo(text: string): void {
  notice("info", text, null);
}

function notice(kind: "error" | "info", text: string, code: string | null): void {
  if (!noticeArea) return;
  const close = h("button", { type: "button", class: "icon-button", "aria-label": "Dismiss" }, "×");
  const item = h(
    "div",
    { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status" },
    h(
      "div",
      { class: "notice-text" },
      code ? h("code", { class: "notice-code" }, code) : null,
      text,
    ),
    close,
  );
  close.addEventListener("click", () => item.remove());
  noticeArea.append(item);
  // Only the newest few stay on screen; information leaves by itself, errors do not.
  while (noticeArea.children.length > 4) noticeArea.firstElementChild?.remove();
  if (kind === "info") window.setTimeout(() => item.remove(), 4000);
}

// --- dialogs ---------------------------------------------------------------------------

export interface DialogButton<T> {
  label: string;
  value: T;
  kind?: "primary" | "danger" | "plain";
  /** Focused when the dialog opens: the safe choice for destructive dialogs. */
  autofocus?: boolean;
}

/** A modal dialog; resolves with the chosen button's value, or ``cancel`` on Escape. */
export function dialog<T>(
  title: string,
  body: Children,
  buttons: DialogButton<T>[],
  cancel: T,
): Promise<T> {
  const titleId = uid("dialog-title");
  const element = h(
    "dialog",
    { class: "dialog", "aria-labelledby": titleId },
    h("h2", { id: titleId }, title),
    h("div", { class: "dialog-body" }, body),
  );
  const row = h("div", { class: "dialog-buttons" });
  element.append(row);
  return new Promise((resolve) => {
    let result = cancel;
    for (const button of buttons) {
      const b = h(
        "button",
        { type: "button", class: `button ${button.kind ?? "plain"}`, autofocus: button.autofocus },
        button.label,
      );
      b.addEventListener("click", () => {
        result = button.value;
        element.close();
      });
      row.append(b);
    }
    element.addEventListener("close", () => {
      element.remove();
      resolve(result);
    });
    document.body.append(element);
    element.showModal();
  });
}

export async function confirmDialog(
  title: string,
  body: Children,
  confirmLabel: string,
  danger = false,
): Promise<boolean> {
  return dialog(
    title,
    body,
    [
      { label: "Cancel", value: false, autofocus: danger },
      { label: confirmLabel, value: true, kind: danger ? "danger" : "primary", autofocus: !danger },
    ],
    false,
  );
}

// --- badges ----------------------------------------------------------------------------

const STATUS_TONE: Record<SessionStatus, string> = {
  creating: "busy",
  running: "good",
  stopped: "muted",
  failed: "bad",
  deleting: "busy",
};

const HEALTH_TONE: Record<HealthState, string> = {
  healthy: "good",
  starting: "busy",
  stopped: "muted",
  missing: "bad",
  error: "bad",
  crash_loop: "bad",
  worktree_missing: "bad",
  archived: "muted",
};

const AGENT_TONE: Record<AgentState, string> = {
  working: "busy",
  waiting_input: "info",
  waiting_approval: "warn",
  idle: "muted",
  unknown: "muted",
  error: "bad",
};

export function label(value: string): string {
  return value.replaceAll("_", " ");
}

export function statusBadge(status: SessionStatus): HTMLElement {
  return h(
    "span",
    { class: `badge tone-${STATUS_TONE[status] ?? "muted"}`, "data-status": status },
    label(status),
  );
}

export function healthBadge(health: HealthState): HTMLElement {
  return h(
    "span",
    { class: `badge tone-${HEALTH_TONE[health] ?? "muted"}`, "data-health": health },
    `health: ${label(health)}`,
  );
}

export function agentBadge(state: AgentState): HTMLElement {
  return h(
    "span",
    { class: `badge tone-${AGENT_TONE[state] ?? "muted"}`, "data-agent-state": state },
    `agent: ${label(state)}`,
  );
}

/** A progress bar with its message, or nothing. */
export function progressBar(progress: { step: number; total: number; message: string } | null) {
  if (!progress) return null;
  const max = Math.max(progress.total, 1);
  return h(
    "div",
    { class: "progress" },
    h("progress", {
      max,
      value: Math.min(progress.step, max),
      "aria-label": `Step ${progress.step} of ${progress.total}`,
    }),
    h("span", { class: "progress-text" }, `${progress.step}/${progress.total} ${progress.message}`),
  );
}

/** Render a countdown "in N s" into ``target`` until ``at`` (ms); returns a stop function. */
export function countdown(target: HTMLElement, at: number, prefix: string): () => void {
  const tick = () => {
    const seconds = Math.max(0, Math.ceil((at - Date.now()) / 1000));
    replace(target, `${prefix} in ${seconds} s`);
  };
  tick();
  const timer = window.setInterval(tick, 500);
  return () => window.clearInterval(timer);
}
