/**
 * A session's chat: messages, tool calls (collapsible, with their input and, once it
 * arrives, their output) and token counts, kept in ``seq`` order whatever order the events
 * come in (history from REST, live and replayed ones from the socket) and each shown once.
 */

import { formatNumber, h, replace } from "./dom";
import type { ChatMessage, ServerEvent, ToolCall, ToolResult } from "./types";
import { CHAT_TYPES } from "./types";

interface Item {
  seq: number;
  element: HTMLElement;
}

interface CallView {
  element: HTMLDetailsElement;
  output: HTMLElement;
}

/** A short line saying what a tool call does, from the usual input fields. */
function callSummary(input: unknown): string {
  if (input && typeof input === "object") {
    const fields = input as Record<string, unknown>;
    for (const key of ["command", "cmd", "file_path", "path", "pattern", "url", "description"]) {
      const value = fields[key];
      if (typeof value === "string" && value) return oneLine(value);
      if (Array.isArray(value) && value.every((v) => typeof v === "string")) {
        return oneLine(value.join(" "));
      }
    }
    const first = Object.values(fields).find((v) => typeof v === "string");
    if (typeof first === "string") return oneLine(first);
  }
  return "";
}

function oneLine(text: string): string {
  const line = text.replace(/\s+/g, " ").trim();
  return line.length > 90 ? `${line.slice(0, 89)}…` : line;
}

function pretty(value: unknown): string {
  if (typeof value === "string") return value;
  try {
    return JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}

function clock(iso: string | undefined): HTMLElement | null {
  if (!iso) return null;
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return null;
  return h(
    "time",
    { datetime: iso, class: "chat-time" },
    date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }),
  );
}

export class ChatLog {
  readonly element: HTMLElement;
  private readonly list: HTMLElement;
  private readonly totals: HTMLElement;
  private readonly empty: HTMLElement;
  private readonly earlier: HTMLButtonElement;
  private items: Item[] = [];
  private seen = new Set<number>();
  private calls = new Map<string, CallView>();
  /** Results whose call has not been shown yet (only possible mid-load). */
  private early = new Map<string, ToolResult>();
  private tokensIn = 0;
  private tokensOut = 0;

  constructor() {
    this.list = h("ol", {
      class: "chat-list",
      role: "log",
      "aria-label": "Chat",
      "aria-live": "polite",
    });
    this.totals = h("p", { class: "chat-totals", "aria-live": "off" });
    this.empty = h(
      "p",
      { class: "chat-empty" },
      "No messages yet. The agent's conversation appears here as it happens.",
    );
    this.earlier = h(
      "button",
      { type: "button", class: "button plain small earlier", hidden: true },
      "Load earlier messages",
    );
    this.element = h(
      "div",
      { class: "chat-log" },
      this.totals,
      this.earlier,
      this.empty,
      this.list,
    );
    this.renderTotals();
  }

  /** Offer the part of a long chat that the session's history left out. */
  offerEarlier(load: () => Promise<boolean>): void {
    const button = this.earlier;
    button.hidden = false;
    button.onclick = async () => {
      button.disabled = true;
      button.textContent = "Loading…";
      try {
        if (await load()) button.hidden = true;
      } finally {
        button.disabled = false;
        button.textContent = "Load earlier messages";
      }
    };
  }

  get scroller(): HTMLElement {
    return this.element;
  }

  clear(): void {
    this.items = [];
    this.seen.clear();
    this.calls.clear();
    this.early.clear();
    this.tokensIn = 0;
    this.tokensOut = 0;
    this.list.replaceChildren();
    this.empty.hidden = false;
    this.earlier.hidden = true;
    this.renderTotals();
  }

  /** Add one event if it is a chat event not shown yet. */
  add(event: ServerEvent): void {
    if (!CHAT_TYPES.has(event.type) || typeof event.seq !== "number") return;
    if (this.seen.has(event.seq)) return;
    this.seen.add(event.seq);
    let element: HTMLElement | null = null;
    if (event.type === "chat_message" && event.message && typeof event.message === "object") {
      element = this.message(event.message, event.timestamp);
    } else if (event.type === "tool_call" && event.call) {
      element = this.call(event.call, event.timestamp);
    } else if (event.type === "tool_result" && event.result) {
      element = this.result(event.result);
    }
    if (element) this.insert(event.seq, element);
  }

  private insert(seq: number, element: HTMLElement): void {
    const stick = this.nearBottom();
    element.dataset.seq = String(seq);
    // Nearly always an append; history loaded after live events lands before them.
    let index = this.items.length;
    while (index > 0 && (this.items[index - 1]?.seq ?? 0) > seq) index -= 1;
    const before = this.items[index]?.element ?? null;
    this.list.insertBefore(element, before);
    this.items.splice(index, 0, { seq, element });
    this.empty.hidden = true;
    if (stick) this.scrollToEnd();
  }

  private message(message: ChatMessage, timestamp: string | undefined): HTMLElement {
    const tokens: string[] = [];
    if (typeof message.tokens_input === "number") {
      this.tokensIn += message.tokens_input;
      tokens.push(`in ${formatNumber(message.tokens_input)}`);
    }
    if (typeof message.tokens_output === "number") {
      this.tokensOut += message.tokens_output;
      tokens.push(`out ${formatNumber(message.tokens_output)}`);
    }
    if (tokens.length) this.renderTotals();
    return h(
      "li",
      { class: `chat-item chat-message role-${message.role}` },
      h(
        "div",
        { class: "chat-meta" },
        h("span", { class: "chat-role" }, message.role === "user" ? "You" : "Agent"),
        message.model ? h("span", { class: "chat-model" }, message.model) : null,
        tokens.length ? h("span", { class: "chat-tokens" }, `${tokens.join(" · ")} tokens`) : null,
        clock(timestamp),
      ),
      h("div", { class: "chat-content" }, message.content),
    );
  }

  private call(call: ToolCall, timestamp: string | undefined): HTMLElement {
    const output = h(
      "div",
      { class: "tool-output pending" },
      h("p", { class: "muted" }, "Running…"),
    );
    const summary = callSummary(call.input);
    const details = h(
      "details",
      { class: "tool-call", "data-call-id": call.id },
      h(
        "summary",
        null,
        h("span", { class: "tool-name" }, call.name),
        summary ? h("span", { class: "tool-summary" }, summary) : null,
        h("span", { class: "tool-state", "aria-label": "running" }, "…"),
        clock(timestamp),
      ),
      h(
        "div",
        { class: "tool-section" },
        h("h4", null, "Input"),
        h("pre", { class: "tool-input" }, pretty(call.input)),
      ),
      h("div", { class: "tool-section" }, h("h4", null, "Output"), output),
    );
    this.calls.set(call.id, { element: details, output });
    const early = this.early.get(call.id);
    if (early) {
      this.early.delete(call.id);
      this.fill({ element: details, output }, early);
    }
    return h("li", { class: "chat-item" }, details);
  }

  private result(result: ToolResult): HTMLElement | null {
    const view = this.calls.get(result.call_id);
    if (view) {
      this.fill(view, result);
      return null;
    }
    this.early.set(result.call_id, result);
    return null;
  }

  private fill(view: CallView, result: ToolResult): void {
    view.output.classList.remove("pending");
    replace(
      view.output,
      h(
        "pre",
        { class: result.is_error ? "tool-result error" : "tool-result" },
        result.output || "(no output)",
      ),
    );
    const state = view.element.querySelector(".tool-state");
    if (state) {
      state.textContent = result.is_error ? "failed" : "done";
      state.setAttribute("aria-label", result.is_error ? "failed" : "done");
      state.className = `tool-state ${result.is_error ? "tone-bad" : "tone-good"}`;
    }
  }

  private renderTotals(): void {
    replace(
      this.totals,
      this.tokensIn || this.tokensOut
        ? `Tokens so far: ${formatNumber(this.tokensIn)} in, ${formatNumber(this.tokensOut)} out`
        : "",
    );
    this.totals.hidden = !(this.tokensIn || this.tokensOut);
  }

  private nearBottom(): boolean {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }

  scrollToEnd(): void {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }
}
