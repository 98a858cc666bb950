/**
 * One file's diff in the Changes tab: fetched as a unified patch, drawn by diff2html (unified
 * or split, syntax highlighted by highlight.js through it), and a comment on a line or a
 * selection of lines sent to the agent as a message that quotes the code.
 *
 * The patch comes from the session's worktree, which its agent controls: diff2html escapes
 * every line and name before it becomes markup (its templates escape, highlight.js escapes),
 * the page's CSP allows no inline script, and a patch over MAX_PATCH_CHARS is not drawn at
 * all, so a hostile file can neither run code here nor freeze the page.
 */

import "diff2html/bundles/css/diff2html.min.css";

import type { ColorSchemeType } from "diff2html/lib-esm/types";

type Renderer = typeof import("diff2html/lib-esm/ui/js/diff2html-ui-slim");
let renderer: Promise<Renderer> | null = null;

/**
 * diff2html and highlight.js, most of the bundle, load when the first diff is drawn (a
 * chunk of their own): the page and the tab's file list paint without waiting for them.
 */
function loadRenderer(): Promise<Renderer> {
  renderer ??= import("diff2html/lib-esm/ui/js/diff2html-ui-slim");
  return renderer;
}

import { api, ApiError } from "./api";
import { h, replace } from "./dom";
import type { DiffInclude, FileChange } from "./types";

/** Bigger patches are not drawn: diff2html and highlight.js would hold the page for seconds. */
export const MAX_PATCH_CHARS = 1_500_000;
/** Lines of code quoted in one comment; the rest is cut, and the message says so. */
const MAX_QUOTED_LINES = 200;
const MODE_KEY = "corral.diffMode";

export type DiffMode = "line-by-line" | "side-by-side";

/** GET ``path`` as text (the daemon's JSON error body, when it fails, as an ApiError). */
export async function getText(path: string): Promise<string> {
  let response: Response;
  try {
    response = await fetch(path, { credentials: "same-origin" });
  } catch (error) {
    throw new ApiError(0, "NETWORK_ERROR", `The daemon did not answer (${String(error)})`);
  }
  const text = await response.text();
  if (response.ok) return text;
  let error: { code?: string; message?: string; details?: unknown } | undefined;
  try {
    error = (JSON.parse(text) as { error?: typeof error }).error;
  } catch {
    error = undefined;
  }
  throw new ApiError(
    response.status,
    error?.code ?? `HTTP_${response.status}`,
    error?.message ?? `GET ${path} failed: ${response.status} ${response.statusText}`,
    error?.details,
  );
}

/** One code line picked for a comment. */
export interface PickedLine {
  prefix: string;
  text: string;
  oldNumber: number | null;
  newNumber: number | null;
}

export interface DiffTarget {
  mount: string;
  /** Shown in the message when the session has several repositories. */
  showMount: boolean;
  file: FileChange;
  include: DiffInclude;
}

/** The lines' numbers for people: "line 4", "lines 4–9" (new side first, else old). */
export function lineRange(lines: PickedLine[]): string {
  const numbers = lines
    .map((line) => line.newNumber ?? line.oldNumber)
    .filter((n): n is number => n !== null);
  const first = numbers[0];
  const last = numbers[numbers.length - 1];
  if (first === undefined || last === undefined) return "the selected lines";
  return first === last ? `line ${first}` : `lines ${first}–${last}`;
}

/** The message that carries a review comment to the agent, the code quoted in a fence. */
export function commentMessage(target: DiffTarget, lines: PickedLine[], comment: string): string {
  const shown = lines.slice(0, MAX_QUOTED_LINES);
  const code = shown.map((line) => `${line.prefix}${line.text}`).join("\n");
  // A fence longer than any run of backticks in the code, so the quote cannot end early.
  const longest = Math.max(0, ...[...code.matchAll(/`+/g)].map((m) => m[0].length));
  const fence = "`".repeat(Math.max(3, longest + 1));
  const where = target.showMount ? ` in repository ${target.mount}` : "";
  const cut =
    lines.length > shown.length ? `\n(${lines.length - shown.length} more lines not quoted)` : "";
  return (
    `Review comment on ${target.file.path}${where}, ${lineRange(lines)} of the diff:\n\n` +
    `${fence}diff\n${code}\n${fence}${cut}\n\n${comment.trim()}`
  );
}

function numberIn(element: Element | null): number | null {
  const text = element?.textContent?.trim() ?? "";
  return /^\d+$/.test(text) ? Number(text) : null;
}

/** The code line a diff2html row holds, or null for hunk headers and split-view padding. */
function rowLine(row: Element): PickedLine | null {
  const content = row.querySelector(".d2h-code-line-ctn");
  if (!content || row.querySelector(".d2h-code-side-emptyplaceholder, .d2h-emptyplaceholder")) {
    return null;
  }
  const prefix = row.querySelector(".d2h-code-line-prefix")?.textContent ?? " ";
  const line: PickedLine = {
    prefix: prefix.replace(/\u00a0/g, " ") || " ",
    text: content.textContent ?? "",
    oldNumber: null,
    newNumber: null,
  };
  const side = row.querySelector(".d2h-code-side-linenumber");
  if (side) {
    // Split view: the first table is the old side, the second the new.
    const tables = row.closest(".d2h-files-diff")?.querySelectorAll(".d2h-file-side-diff");
    const isOld = tables?.[0]?.contains(row) ?? false;
    if (isOld) line.oldNumber = numberIn(side);
    else line.newNumber = numberIn(side);
  } else {
    line.oldNumber = numberIn(row.querySelector(".line-num1"));
    line.newNumber = numberIn(row.querySelector(".line-num2"));
  }
  return line;
}

export class DiffViewer {
  readonly element: HTMLElement;
  private readonly title: HTMLElement;
  private readonly body: HTMLElement;
  private readonly modeButtons = new Map<DiffMode, HTMLButtonElement>();
  private readonly selectionButton: HTMLButtonElement;
  private readonly commentBox: HTMLFormElement;
  private readonly commentTitle: HTMLElement;
  private readonly commentQuote: HTMLElement;
  private readonly commentText: HTMLTextAreaElement;
  private readonly commentNote: HTMLElement;
  private mode: DiffMode;
  private target: DiffTarget | null = null;
  private patch: string | null = null;
  private picked: PickedLine[] = [];
  private anchorRow: Element | null = null;
  private request = 0;
  private readonly onSelection = (): void => this.selectionChanged();

  constructor(
    private readonly sessionId: string,
    private readonly report: (error: unknown, context: string) => void,
  ) {
    this.mode = localStorage.getItem(MODE_KEY) === "side-by-side" ? "side-by-side" : "line-by-line";
    this.title = h("h3", { class: "diff-title" }, "Diff");
    const modes = h("div", { class: "diff-modes", role: "group", "aria-label": "Diff layout" });
    for (const [mode, label] of [
      ["line-by-line", "Unified"],
      ["side-by-side", "Split"],
    ] as const) {
      const button = h(
        "button",
        { type: "button", class: "button plain small", "data-mode": mode },
        label,
      );
      button.addEventListener("click", () => this.setMode(mode));
      modes.append(button);
      this.modeButtons.set(mode, button);
    }
    this.selectionButton = h(
      "button",
      {
        type: "button",
        class: "button plain small",
        disabled: true,
        title: "Select lines of the diff, then comment on them",
      },
      "Comment on selection",
    );
    // mousedown would clear the selection before the click reads it.
    this.selectionButton.addEventListener("mousedown", (event) => event.preventDefault());
    this.selectionButton.addEventListener("click", () => this.commentOnSelection());

    this.commentTitle = h("h4", null, "Comment");
    this.commentQuote = h("pre", { class: "comment-quote" });
    this.commentText = h("textarea", {
      rows: 3,
      "aria-label": "Your comment for the agent",
      placeholder: "What should the agent change here?",
    });
    this.commentNote = h("p", { class: "comment-note", role: "status" });
    const send = h("button", { type: "submit", class: "button primary small" }, "Send to agent");
    const cancel = h("button", { type: "button", class: "button plain small" }, "Cancel");
    cancel.addEventListener("click", () => this.closeComment());
    this.commentBox = h(
      "form",
      { class: "diff-comment", hidden: true, "aria-label": "Comment on the diff" },
      this.commentTitle,
      this.commentQuote,
      this.commentText,
      h("div", { class: "form-buttons" }, send, cancel),
    );
    this.commentBox.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.sendComment();
    });
    this.commentText.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.commentBox.requestSubmit();
      }
    });

    this.body = h("div", { class: "diff-body" });
    this.body.addEventListener("click", (event) => this.lineClick(event));
    this.element = h(
      "section",
      { class: "diff-viewer", "aria-label": "Diff" },
      h("div", { class: "diff-bar" }, this.title, modes, this.selectionButton),
      this.commentNote,
      this.commentBox,
      this.body,
    );
    document.addEventListener("selectionchange", this.onSelection);
    this.renderModes();
    this.empty("Choose a file to see its diff.");
  }

  dispose(): void {
    document.removeEventListener("selectionchange", this.onSelection);
    this.request += 1;
  }

  get current(): DiffTarget | null {
    return this.target;
  }

  empty(text: string): void {
    this.request += 1;
    this.target = null;
    this.patch = null;
    this.title.textContent = "Diff";
    this.closeComment();
    replace(this.body, h("p", { class: "muted diff-empty" }, text));
  }

  /** Fetch and draw one file's patch (a newer call wins over an older one still loading). */
  async open(target: DiffTarget): Promise<void> {
    const request = ++this.request;
    if (this.target?.file.path !== target.file.path || this.target.mount !== target.mount) {
      this.closeComment();
    }
    this.target = target;
    const file = target.file;
    replace(
      this.title,
      h("code", null, file.old_path ? `${file.old_path} → ${file.path}` : file.path),
    );
    if (file.summarised) {
      this.patch = null;
      replace(
        this.body,
        h(
          "p",
          { class: "muted diff-empty" },
          `Too large to show here: ${file.additions} lines added, ${file.deletions} removed.`,
        ),
      );
      return;
    }
    replace(this.body, h("p", { class: "muted diff-empty" }, "Loading the diff…"));
    const query = new URLSearchParams({
      path: file.path,
      repository: target.mount,
      include: target.include,
    });
    let patch: string;
    try {
      patch = await getText(
        `/api/sessions/${encodeURIComponent(this.sessionId)}/diff?${query.toString()}`,
      );
    } catch (error) {
      if (request !== this.request) return;
      replace(this.body, h("p", { class: "muted diff-empty" }, "The diff could not be loaded."));
      this.report(error, `Loading the diff of ${file.path}`);
      return;
    }
    if (request !== this.request) return;
    this.patch = patch;
    await this.draw();
  }

  private async draw(): Promise<void> {
    const patch = this.patch;
    this.picked = [];
    this.anchorRow = null;
    if (patch === null) return;
    if (patch.length > MAX_PATCH_CHARS) {
      replace(
        this.body,
        h(
          "p",
          { class: "muted diff-empty" },
          `This patch is too large to draw here (${patch.length.toLocaleString("en-US")} characters).`,
        ),
      );
      return;
    }
    if (!patch.trim()) {
      replace(this.body, h("p", { class: "muted diff-empty" }, "No textual change to show."));
      return;
    }
    const mode = this.mode;
    let loaded: Renderer;
    try {
      loaded = await loadRenderer();
    } catch (error) {
      renderer = null; // a failed load (the daemon restarting) is tried again next time
      replace(this.body, h("p", { class: "muted diff-empty" }, "The diff viewer could not be loaded."));
      this.report(error, "Loading the diff viewer");
      return;
    }
    // Another file or layout was asked for while the viewer loaded: that one draws.
    if (patch !== this.patch || mode !== this.mode) return;
    const host = h("div", { class: "diff-render" });
    replace(this.body, host);
    const ui = new loaded.Diff2HtmlUI(host, patch, {
      outputFormat: mode,
      drawFileList: false,
      matching: "lines",
      colorScheme: "auto" as ColorSchemeType,
      highlight: true,
      fileListToggle: false,
      fileContentToggle: false,
      stickyFileHeaders: false,
      synchronisedScroll: true,
    });
    ui.draw();
    // Line numbers are where a comment starts: say so to the pointer and to the keyboard.
    for (const cell of host.querySelectorAll<HTMLElement>(
      "td.d2h-code-linenumber, td.d2h-code-side-linenumber",
    )) {
      if (!cell.closest("tr")?.querySelector(".d2h-code-line-ctn")) continue;
      cell.title = "Comment on this line (Shift+click: up to here)";
      cell.classList.add("commentable");
    }
  }

  private setMode(mode: DiffMode): void {
    if (mode === this.mode) return;
    this.mode = mode;
    localStorage.setItem(MODE_KEY, mode);
    this.renderModes();
    this.closeComment();
    void this.draw();
  }

  private renderModes(): void {
    for (const [mode, button] of this.modeButtons) {
      button.setAttribute("aria-pressed", String(mode === this.mode));
    }
  }

  // --- comments --------------------------------------------------------------------------

  private lineClick(event: MouseEvent): void {
    const cell = (event.target as Element | null)?.closest(
      "td.d2h-code-linenumber, td.d2h-code-side-linenumber",
    );
    const row = cell?.closest("tr");
    if (!row || !this.body.contains(row)) return;
    const rows = this.rowsBetween(event.shiftKey ? this.anchorRow : null, row);
    const lines = rows.map(rowLine).filter((line): line is PickedLine => line !== null);
    if (!lines.length) return;
    if (!event.shiftKey) this.anchorRow = row;
    this.openComment(lines);
  }

  /** The rows from ``anchor`` to ``row`` in one table (just ``row`` without an anchor). */
  private rowsBetween(anchor: Element | null, row: Element): Element[] {
    const table = row.closest("tbody");
    if (!anchor || !table || anchor.closest("tbody") !== table) return [row];
    const all = [...table.querySelectorAll(":scope > tr")];
    const [a, b] = [all.indexOf(anchor), all.indexOf(row)].sort((x, y) => x - y);
    if (a === undefined || b === undefined || a < 0) return [row];
    return all.slice(a, b + 1);
  }

  private selectedRows(): Element[] {
    const selection = document.getSelection();
    if (!selection || selection.isCollapsed || selection.rangeCount === 0) return [];
    const range = selection.getRangeAt(0);
    if (!this.body.contains(range.commonAncestorContainer)) return [];
    return [...this.body.querySelectorAll("tr")].filter((row) => range.intersectsNode(row));
  }

  private selectionChanged(): void {
    this.selectionButton.disabled = !this.selectedRows().some((row) => rowLine(row) !== null);
  }

  private commentOnSelection(): void {
    const lines = this.selectedRows()
      .map(rowLine)
      .filter((line): line is PickedLine => line !== null);
    if (lines.length) this.openComment(lines);
  }

  private openComment(lines: PickedLine[]): void {
    const target = this.target;
    if (!target) return;
    this.picked = lines;
    this.commentTitle.textContent = `Comment on ${target.file.path}, ${lineRange(lines)}`;
    this.commentQuote.textContent = lines
      .slice(0, MAX_QUOTED_LINES)
      .map((line) => `${line.prefix}${line.text}`)
      .join("\n");
    this.commentBox.hidden = false;
    this.commentNote.textContent = "";
    this.commentText.focus();
  }

  private closeComment(): void {
    this.commentBox.hidden = true;
    this.picked = [];
  }

  private async sendComment(): Promise<void> {
    const target = this.target;
    const comment = this.commentText.value;
    if (!target || !this.picked.length) return;
    if (!comment.trim()) {
      this.commentNote.textContent = "Write a comment first.";
      this.commentText.focus();
      return;
    }
    const content = commentMessage(target, this.picked, comment);
    const where = `${target.file.path}, ${lineRange(this.picked)}`;
    try {
      await api.post(`/api/sessions/${encodeURIComponent(this.sessionId)}/message`, { content });
    } catch (error) {
      // The comment stays in the box, so nothing written is lost.
      this.report(error, "Sending the comment to the agent");
      return;
    }
    this.commentText.value = "";
    this.closeComment();
    this.commentNote.textContent = `Sent to the agent: your comment on ${where}.`;
  }
}
