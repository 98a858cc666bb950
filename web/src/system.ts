/**
 * The daemon's readiness (GET /api/system) in the page: a status link in the header, a
 * banner while the agent image builds, and the first-run checklist (each check with its
 * fix, copyable) where a new user lands and on its own page (``#/system``).
 *
 * One monitor fetches the status and polls it every 2 s while the image builds or a needed
 * check fails; it stops once all is well (credential warnings do not change by themselves)
 * and fetches again when a view that shows it opens or the events socket reconnects.
 * Re-renders touch only what changed, so a fix being selected or a focused Copy button
 * survives the polling.
 */

import { ApiError, api } from "./api";
import { checkLine } from "./checkline";
import { credentialsPanel } from "./credentials";
import { h, replace, uid } from "./dom";
import type { SystemCheck, SystemStatus } from "./types";

const POLL_MS = 2000;

/** Checks that decide ``ready``; any other failing check is a warning. */
const NEEDED = new Set(["engine", "image", "data_dir", "disk", "git"]);

const LABELS: Record<string, string> = {
  engine: "Docker engine",
  image: "Agent image",
  credentials_claude: "Claude Code credentials",
  credentials_codex: "Codex credentials",
  data_dir: "Data folder",
  disk: "Free disk space",
  git: "Git",
};

type CheckState = "ok" | "fail" | "warn" | "busy";

const MARKS: Record<CheckState, { mark: string; spoken: string }> = {
  ok: { mark: "✓", spoken: "OK" },
  fail: { mark: "✗", spoken: "Missing" },
  warn: { mark: "!", spoken: "Warning" },
  busy: { mark: "…", spoken: "In progress" },
};

function checkLabel(name: string): string {
  return LABELS[name] ?? name.replaceAll("_", " ");
}

function checkState(check: SystemCheck, status: SystemStatus): CheckState {
  if (check.ok) return "ok";
  if (check.name === "image" && status.image.building) return "busy";
  return NEEDED.has(check.name) ? "fail" : "warn";
}

/** Something for the user to see: a needed check fails, or a warning stands. */
export function needsAttention(status: SystemStatus): boolean {
  return !status.ready || status.checks.some((check) => !check.ok);
}

// --- the monitor -------------------------------------------------------------------------

type Listener = (status: SystemStatus | null) => void;

export class SystemMonitor {
  status: SystemStatus | null = null;
  /** The daemon has no /api/system (an older one): nothing to show, nothing to poll. */
  unavailable = false;
  private timer: number | null = null;
  private inflight: Promise<void> | null = null;
  private listeners = new Set<Listener>();

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  get polling(): boolean {
    return this.timer !== null;
  }

  /** Fetch now (one request at a time); polling goes on while the image builds or a needed
   * check fails. A failed request stops it: the events socket's reconnect starts it again. */
  refresh(): Promise<void> {
    if (this.unavailable) return Promise.resolve();
    this.inflight ??= this.fetch().finally(() => {
      this.inflight = null;
    });
    return this.inflight;
  }

  private async fetch(): Promise<void> {
    if (this.timer !== null) window.clearTimeout(this.timer);
    this.timer = null;
    try {
      this.status = await api.get<SystemStatus>("/api/system");
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) this.unavailable = true;
      return;
    }
    if (this.status.image.building || !this.status.ready) {
      this.timer = window.setTimeout(() => {
        this.timer = null;
        void this.refresh();
      }, POLL_MS);
    }
    for (const listener of this.listeners) listener(this.status);
  }
}

// --- the checklist -----------------------------------------------------------------------

async function copyText(text: string, code: HTMLElement, button: HTMLButtonElement) {
  let said: string;
  try {
    await navigator.clipboard.writeText(text);
    said = "Copied";
  } catch {
    // No clipboard here (a page over plain http on another name): select it for Ctrl+C.
    const range = document.createRange();
    range.selectNodeContents(code);
    const selection = window.getSelection();
    selection?.removeAllRanges();
    selection?.addRange(range);
    said = "Selected: press Ctrl+C";
  }
  button.textContent = said;
  window.setTimeout(() => {
    button.textContent = "Copy";
  }, 2000);
}

function checkItem(check: SystemCheck, state: CheckState): HTMLLIElement {
  const label = checkLabel(check.name);
  let fix: HTMLElement | null = null;
  // While the image builds its fix (the command that builds it) is not for the user to run.
  if (check.fix && (state === "fail" || state === "warn")) {
    const code = h("code", { class: "fix-text" }, check.fix);
    const copy = h(
      "button",
      { type: "button", class: "button plain small", "aria-label": `Copy the fix for ${label}` },
      "Copy",
    );
    copy.addEventListener("click", () => void copyText(check.fix ?? "", code, copy));
    fix = h("div", { class: "check-fix" }, h("span", { class: "fix-label" }, "Fix:"), code, copy);
  }
  return checkLine(
    { attrs: { "data-check": check.name }, state, ...MARKS[state], title: label },
    h("p", { class: "check-summary" }, check.summary),
    fix,
  );
}

/** The checks as a list; ``update`` redraws only the lines whose check changed. */
export class Checklist {
  readonly element: HTMLElement;
  private readonly intro = h("p", { class: "checklist-intro" });
  private readonly list = h("ul", { class: "checklist" });
  private readonly drawn = new Map<string, { key: string; item: HTMLLIElement }>();

  constructor(title: string, more: HTMLElement | null = null) {
    const titleId = uid("checklist-title");
    this.list.setAttribute("aria-labelledby", titleId);
    this.element = h(
      "section",
      { class: "system-checks", "aria-labelledby": titleId },
      h("h2", { id: titleId }, title),
      this.intro,
      this.list,
      more,
    );
  }

  update(status: SystemStatus): void {
    const failing = status.checks.filter((c) => !c.ok && NEEDED.has(c.name)).length;
    const things = failing === 1 ? "one more thing" : `${failing} more things`;
    const intro = status.image.building
      ? "The agent image is being built; sessions created now wait for it."
      : !status.ready
        ? `corral needs ${things} before a session can start. Each line marked ✗ says how to ` +
          "fix it."
        : status.checks.some((c) => !c.ok)
          ? "Sessions can start. The lines marked ! are warnings: an agent may not get far " +
            "without them."
          : "Everything a session needs is in place.";
    if (this.intro.textContent !== intro) this.intro.textContent = intro;
    const names = new Set<string>();
    status.checks.forEach((check, index) => {
      names.add(check.name);
      const state = checkState(check, status);
      const key = JSON.stringify([check, state]);
      let entry = this.drawn.get(check.name);
      if (!entry || entry.key !== key) {
        const item = checkItem(check, state);
        if (entry) entry.item.replaceWith(item);
        entry = { key, item };
        this.drawn.set(check.name, entry);
      }
      if (this.list.children[index] !== entry.item) {
        this.list.insertBefore(entry.item, this.list.children[index] ?? null);
      }
    });
    for (const [name, entry] of this.drawn) {
      if (!names.has(name)) {
        entry.item.remove();
        this.drawn.delete(name);
      }
    }
  }
}

// --- the banner, the header link, the page -----------------------------------------------

function formatBytes(bytes: number | null): string {
  if (bytes === null) return "unknown";
  const gib = bytes / 2 ** 30;
  return gib >= 1 ? `${gib.toFixed(1)} GiB` : `${Math.round(bytes / 2 ** 20)} MiB`;
}

/** The header link, the banner and the checklists, kept current from one monitor. */
export class SystemUi {
  readonly monitor = new SystemMonitor();
  /** In the header: a dot and "System", to the full list. */
  readonly link = h(
    "a",
    { href: "#/system", class: "system-link", "data-state": "unknown" },
    h("span", { class: "system-dot", "aria-hidden": "true" }),
    h("span", { class: "system-text" }, "System"),
  );
  /** Under the header: shown while the image builds, or when its build failed. */
  readonly banner = h("div", {
    class: "system-banner",
    role: "status",
    "aria-live": "polite",
    hidden: true,
  });
  /** Where a new user lands (the empty list, the form): the checklist when needed. */
  readonly slot = h("div", { class: "system-slot", hidden: true });
  private readonly firstRun = new Checklist(
    "Before your first session",
    h(
      "p",
      { class: "checklist-more" },
      h("a", { href: "#/system" }, "Every check and its details"),
    ),
  );
  private bannerKey = "";

  constructor() {
    this.slot.append(this.firstRun.element);
    this.monitor.subscribe((status) => {
      if (status) this.render(status);
    });
  }

  refresh(): void {
    void this.monitor.refresh();
  }

  private render(status: SystemStatus): void {
    const needed = status.checks.filter((c) => !c.ok && NEEDED.has(c.name)).length;
    const warnings = status.checks.filter((c) => !c.ok && !NEEDED.has(c.name)).length;
    const state = status.image.building ? "busy" : needed ? "bad" : warnings ? "warn" : "ok";
    const said = status.image.building
      ? "the agent image is being built"
      : needed
        ? `${needed} problem${needed === 1 ? "" : "s"}`
        : warnings
          ? `ready, ${warnings} warning${warnings === 1 ? "" : "s"}`
          : "ready";
    this.link.dataset.state = state;
    this.link.setAttribute("aria-label", `System: ${said}`);
    this.link.title = `System: ${said}`;

    this.slot.hidden = !needsAttention(status);
    this.firstRun.update(status);
    this.renderBanner(status);
  }

  private renderBanner(status: SystemStatus): void {
    const { image } = status;
    const key = JSON.stringify([image.building, image.progress, image.error]);
    if (key === this.bannerKey) return;
    this.bannerKey = key;
    if (image.building) {
      const p = image.progress;
      const text = p
        ? `Building the agent image: step ${p.step}/${p.total} — ${p.message}`
        : `Building the agent image ${image.name}…`;
      this.banner.dataset.tone = "busy";
      const max = Math.max(p?.total ?? 1, 1);
      replace(
        this.banner,
        h("p", { class: "banner-text" }, text),
        h("progress", {
          max,
          value: p ? Math.min(p.step, max) : null,
          "aria-label": "Image build progress",
        }),
        h("p", { class: "hint" }, "Sessions created now wait in “creating” until it is done."),
      );
      this.banner.hidden = false;
    } else if (image.error && !image.present) {
      // The error ends with the recipe's last output: the checklist and the log have it.
      const firstLine = (image.error.split("\n")[0] ?? "").slice(0, 300);
      this.banner.dataset.tone = "bad";
      replace(
        this.banner,
        h("p", { class: "banner-text" }, `The agent image could not be built: ${firstLine}`),
        h("a", { href: "#/system" }, "How to fix it"),
      );
      this.banner.hidden = false;
    } else {
      this.banner.hidden = true;
      this.banner.replaceChildren();
    }
  }

  /** The ``#/system`` page: every check, ticked or not, and the facts behind them. */
  view(): HTMLElement {
    const checklist = new Checklist("System");
    const facts = h("dl", { class: "facts" });
    const again = h("button", { type: "button", class: "button plain" }, "Check again");
    again.addEventListener("click", () => this.refresh());
    const element = h(
      "div",
      { class: "view system-view" },
      checklist.element,
      credentialsPanel(() => this.refresh()),
      h("h3", null, "Details"),
      facts,
      again,
    );
    const draw = (status: SystemStatus | null) => {
      if (!status) return;
      checklist.update(status);
      const row = (term: string, value: string) => [h("dt", null, term), h("dd", null, value)];
      const engine = status.engine.reachable
        ? `answers, version ${status.engine.version ?? "unknown"}`
        : "does not answer";
      replace(
        facts,
        row("Docker engine", engine),
        row("Agent image", `${status.image.name}${status.image.present ? "" : " (missing)"}`),
        row("Data folder", status.data_dir.path),
        row("Free space", formatBytes(status.data_dir.free_bytes)),
        row("Git", status.git.version ?? "not found"),
      );
    };
    if (this.monitor.unavailable) {
      const why = "This daemon does not report its readiness (it has no /api/system).";
      replace(element, h("h2", null, "System"), h("p", null, why));
    }
    draw(this.monitor.status);
    const stop = this.monitor.subscribe((status) => {
      if (!element.isConnected && this.monitor.status !== null) {
        stop();
        return;
      }
      draw(status);
    });
    this.refresh();
    return element;
  }
}
