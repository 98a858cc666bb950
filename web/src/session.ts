/**
 * One session's screen: its header (state, branch, repositories, progress, offered actions)
 * over four tabs, chat, terminal, health and changes (changes.ts).
 *
 * The chat follows the session on the page's events socket: subscribe first (the answer
 * says the latest seq), then load the stored history, so nothing falls between the two;
 * the socket's replay covers reconnects. The terminal is created the first time its tab
 * shows (xterm must measure a visible box) and kept while the session is open, so
 * switching tabs never drops the console socket.
 */

import { ACTION_ORDER, ACTIONS, actionClass, keepsText, runAction } from "./actions";
import { api, errorMessage } from "./api";
import { ChangesPanel } from "./changes";
import { ChatLog } from "./chat";
import { uploadFiles } from "./create";
import { type Children, h, relativeTime, replace, uid } from "./dom";
import type { EventsClient } from "./events";
import { MetadataEditor } from "./metadata";
import type { SessionStore } from "./store";
import { TerminalPanel, type TerminalState } from "./terminal";
import type { Action, HealthReport, ServerEvent, Session, SessionDetail } from "./types";
import {
  agentBadge,
  countdown,
  healthBadge,
  label,
  progressBar,
  showError,
  showInfo,
  statusBadge,
} from "./ui";
import { UsagePanel } from "./usage";

export type Tab = "chat" | "terminal" | "health" | "changes";

/** One term of a description list, kept together so the list can wrap pair by pair. */
function fact(term: string, ...value: Children[]): HTMLElement {
  return h("div", { class: "fact" }, h("dt", null, term), h("dd", null, value));
}
export const TABS: Tab[] = ["chat", "terminal", "health", "changes"];
const TAB_LABELS: Record<Tab, string> = {
  chat: "Chat",
  terminal: "Terminal",
  health: "Health",
  changes: "Changes",
};

export interface SessionContext {
  store: SessionStore;
  events: EventsClient;
  navigate: (hash: string) => void;
  /** Whether the daemon offers regenerate-metadata (null: unknown). */
  aiMetadata: () => Promise<boolean | null>;
}

export class SessionView {
  readonly element: HTMLElement;
  private readonly header: HTMLElement;
  private readonly actionBar: HTMLElement;
  private readonly metadata: MetadataEditor;
  private readonly usagePanel: UsagePanel;
  private readonly tabButtons = new Map<Tab, HTMLButtonElement>();
  private readonly panels = new Map<Tab, HTMLElement>();
  private readonly chat = new ChatLog();
  private readonly changes: ChangesPanel;
  private readonly chatNote: HTMLElement;
  private readonly composer: HTMLFormElement;
  private readonly messageBox: HTMLTextAreaElement;
  private readonly sendButton: HTMLButtonElement;
  private readonly healthBody: HTMLElement;
  private readonly termHost: HTMLElement;
  private readonly termStatus: HTMLElement;
  private terminal: TerminalPanel | null = null;
  private stopCountdown: (() => void) | null = null;
  private report: HTMLElement | null = null;
  private health: HealthReport | null = null;
  private healthError: string | null = null;
  private busy: Action | null = null;
  private tab: Tab = "chat";
  private disposed = false;
  private unsubscribers: (() => void)[] = [];
  private healthTimer: number | undefined;
  private lastStatus: string | null = null;

  constructor(
    readonly sessionId: string,
    private readonly ctx: SessionContext,
  ) {
    this.header = h("header", { class: "session-header" });
    this.metadata = new MetadataEditor(sessionId, ctx);
    this.usagePanel = new UsagePanel(sessionId);
    this.usagePanel.onSaved = (session) => ctx.store.upsert(session);
    this.actionBar = h("div", {
      class: "action-bar",
      role: "toolbar",
      "aria-label": "Session actions",
    });

    const tabList = h("div", { class: "tabs", role: "tablist", "aria-label": "Session views" });
    for (const tab of TABS) {
      const id = uid(`tab-${tab}`);
      const panelId = `${id}-panel`;
      const button = h(
        "button",
        {
          type: "button",
          role: "tab",
          id,
          "aria-controls": panelId,
          "data-tab": tab,
          tabindex: "-1",
        },
        TAB_LABELS[tab],
      );
      button.addEventListener("click", () => this.ctx.navigate(`#/s/${this.sessionId}/${tab}`));
      button.addEventListener("keydown", (event) => this.tabKey(event, tab));
      tabList.append(button);
      this.tabButtons.set(tab, button);
      const panel = h("section", {
        class: `tab-panel panel-${tab}`,
        role: "tabpanel",
        id: panelId,
        "aria-labelledby": id,
        hidden: true,
      });
      this.panels.set(tab, panel);
    }

    // chat
    const messageId = uid("message");
    this.messageBox = h("textarea", {
      id: messageId,
      rows: 2,
      placeholder: "Message the agent (Enter sends, Shift+Enter for a new line)",
    });
    this.sendButton = h("button", { type: "submit", class: "button primary" }, "Send");
    const attachId = uid("attach");
    const attach = h("input", {
      id: attachId,
      type: "file",
      multiple: true,
      class: "visually-hidden",
    });
    this.chatNote = h("p", { class: "composer-note", role: "status" });
    this.composer = h(
      "form",
      { class: "composer", "aria-label": "Send a message" },
      h("label", { for: messageId, class: "visually-hidden" }, "Message to the agent"),
      this.messageBox,
      h(
        "div",
        { class: "composer-buttons" },
        h(
          "label",
          {
            for: attachId,
            class: "button plain",
            title: "Upload files into the working directory",
          },
          "Attach",
        ),
        attach,
        this.sendButton,
      ),
      this.chatNote,
    );
    this.composer.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.send();
    });
    this.messageBox.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.composer.requestSubmit();
      }
    });
    attach.addEventListener("change", () => void this.attach(attach));
    this.panels.get("chat")?.append(this.chat.element, this.composer);

    // terminal
    this.termStatus = h("span", { class: "term-status", role: "status" });
    const reconnect = h("button", { type: "button", class: "button plain small" }, "Reconnect");
    reconnect.addEventListener("click", () => this.terminal?.reconnect());
    this.termHost = h("div", { class: "term-host", role: "region", "aria-label": "Terminal" });
    this.panels
      .get("terminal")
      ?.append(
        h(
          "div",
          { class: "term-bar" },
          this.termStatus,
          reconnect,
          h("small", { class: "hint" }, "Alt+1/2/3/4 switch tabs from inside the terminal"),
        ),
        this.termHost,
      );

    // health
    this.healthBody = h("div", { class: "health-body" });
    const recheck = h("button", { type: "button", class: "button plain small" }, "Check again");
    recheck.addEventListener("click", () => void this.loadHealth());
    this.panels.get("health")?.append(h("div", { class: "health-bar" }, recheck), this.healthBody);

    // changes
    this.changes = new ChangesPanel(sessionId, () => this.session);
    this.panels.get("changes")?.append(this.changes.element);

    this.element = h(
      "article",
      { class: "view session-view", "aria-labelledby": "session-title" },
      this.header,
      this.metadata.element,
      this.usagePanel.element,
      this.actionBar,
      tabList,
      [...this.panels.values()],
    );

    this.unsubscribers.push(
      ctx.store.subscribe((changed) => {
        if (changed === null || changed === this.sessionId) this.sessionChanged();
      }),
    );
    this.unsubscribers.push(ctx.events.onEvent((event) => this.onEvent(event)));
    this.sessionChanged();
    void this.loadChat();
    void this.loadHealth();
  }

  get session(): Session | undefined {
    return this.ctx.store.get(this.sessionId);
  }

  get activeTerminal(): TerminalPanel | null {
    return this.terminal;
  }

  setTab(tab: Tab, focus = false): void {
    this.tab = tab;
    for (const [name, button] of this.tabButtons) {
      const selected = name === tab;
      button.setAttribute("aria-selected", String(selected));
      button.tabIndex = selected ? 0 : -1;
      const panel = this.panels.get(name);
      if (panel) panel.hidden = !selected;
    }
    if (tab === "terminal") this.showTerminal();
    if (tab === "chat") this.chat.scrollToEnd();
    if (tab === "health") void this.loadHealth();
    if (tab === "changes") this.changes.show();
    else this.changes.hide();
    if (focus) {
      if (tab === "terminal") this.terminal?.focus();
      else this.tabButtons.get(tab)?.focus();
    }
  }

  dispose(): void {
    this.disposed = true;
    this.metadata.dispose();
    this.usagePanel.dispose();
    this.changes.dispose();
    for (const stop of this.unsubscribers) stop();
    this.ctx.events.unsubscribeSession(this.sessionId);
    this.terminal?.dispose();
    this.terminal = null;
    this.stopCountdown?.();
    window.clearTimeout(this.healthTimer);
  }

  /** Keyboard on the tab list: arrows, Home and End move between tabs (WAI-ARIA tabs). */
  private tabKey(event: KeyboardEvent, tab: Tab): void {
    const index = TABS.indexOf(tab);
    let next: Tab | undefined;
    if (event.key === "ArrowRight") next = TABS[(index + 1) % TABS.length];
    else if (event.key === "ArrowLeft") next = TABS[(index + TABS.length - 1) % TABS.length];
    else if (event.key === "Home") next = TABS[0];
    else if (event.key === "End") next = TABS[TABS.length - 1];
    if (!next) return;
    event.preventDefault();
    this.ctx.navigate(`#/s/${this.sessionId}/${next}`);
    this.tabButtons.get(next)?.focus();
  }

  // --- session state -------------------------------------------------------------------

  private sessionChanged(): void {
    if (this.disposed) return;
    const session = this.session;
    if (!session) {
      if (this.ctx.store.loaded) {
        replace(
          this.header,
          h("h2", { id: "session-title" }, "Session not found"),
          h(
            "p",
            null,
            "It may have been deleted. ",
            h("a", { href: "#/" }, "Back to the sessions"),
          ),
        );
        this.actionBar.replaceChildren();
        this.metadata.setAvailable(false);
        this.terminal?.park("The session is gone");
      }
      return;
    }
    this.metadata.setAvailable(true);
    this.renderHeader(session);
    this.changes.sessionChanged();
    this.usagePanel.setSession(session);
    const status = `${session.status}/${session.archived}/${session.health}`;
    if (status !== this.lastStatus) {
      this.lastStatus = status;
      this.scheduleHealth();
      this.updateTerminalForStatus(session);
    }
    const running = session.status === "running" && !session.archived;
    this.messageBox.disabled = !running;
    this.sendButton.disabled = !running;
    if (!running && !this.chatNote.dataset.sticky) {
      this.chatNote.textContent =
        session.status === "creating"
          ? "Messages can be sent once the session is running."
          : "The session is not running: start or recreate it to send messages.";
    } else if (running && !this.chatNote.dataset.sticky) {
      this.chatNote.textContent = "";
    }
  }

  private renderHeader(session: Session): void {
    const repos = session.repositories.map((repo) =>
      h(
        "li",
        null,
        h("code", null, repo.is_primary ? "/workspace" : `/repos/${repo.mount_name}`),
        " ← ",
        h("span", { class: "path" }, repo.path),
        h("span", { class: "muted" }, ` (from ${repo.base_branch})`),
      ),
    );
    replace(
      this.header,
      h("a", { href: "#/", class: "back-link" }, "← Sessions"),
      h("h2", { id: "session-title" }, session.name),
      session.description ? h("p", { class: "description" }, session.description) : null,
      session.tags.length
        ? h(
            "ul",
            { class: "tags", "aria-label": "Tags" },
            session.tags.map((tag) => h("li", { class: "tag" }, tag)),
          )
        : null,
      h(
        "div",
        { class: "badges" },
        statusBadge(session.status),
        session.archived ? h("span", { class: "badge tone-muted" }, "archived") : null,
        session.health !== "healthy" ? healthBadge(session.health) : null,
        session.agent_state !== "unknown" ? agentBadge(session.agent_state) : null,
      ),
      h(
        "dl",
        { class: "facts inline-facts" },
        fact("Branch", h("code", { class: "branch" }, session.branch_name)),
        fact(
          "Agent",
          session.agent,
          session.model ? ` (${session.model})` : "",
          session.no_plan_mode ? "" : ", plan mode",
        ),
        session.backend === "local"
          ? fact("Runs", "on the host (local backend, no container)")
          : fact("Image", h("code", null, session.image ?? "default")),
        fact(
          "Created",
          h(
            "time",
            { datetime: session.created_at, title: session.created_at },
            relativeTime(session.created_at),
          ),
        ),
        fact(
          session.repositories.length > 1 ? "Repositories" : "Repository",
          h("ul", { class: "repos" }, repos),
        ),
      ),
      progressBar(session.progress),
      session.error_message
        ? h(
            "p",
            { class: "error-box", role: "alert" },
            h("strong", null, "Error: "),
            session.error_message,
          )
        : null,
    );
    // Renamed (here or elsewhere): the window's title follows.
    document.title = `${session.name} · corral`;
    this.renderActions();
  }

  // --- actions -------------------------------------------------------------------------

  private renderActions(): void {
    const session = this.session;
    const report = this.health;
    if (!session) return;
    if (!report) {
      replace(
        this.actionBar,
        this.healthError
          ? h("span", { class: "muted" }, "Actions unavailable: ", this.healthError)
          : null,
      );
      return;
    }
    const offered = ACTION_ORDER.filter((action) => report.available_actions.includes(action));
    replace(
      this.actionBar,
      offered.map((action) => {
        const keeps = report.data_preservation[action];
        const recommended = report.recommended_action === action;
        const button = h(
          "button",
          {
            type: "button",
            class: actionClass(action, recommended, keeps),
            "data-action": action,
            title: `${ACTIONS[action].description} ${keepsText(keeps)}`,
            disabled: this.busy !== null,
            "aria-describedby": recommended ? "recommended-note" : null,
          },
          this.busy === action ? ACTIONS[action].running : ACTIONS[action].label,
        );
        button.addEventListener("click", () => void this.act(action));
        return button;
      }),
      report.recommended_action
        ? h(
            "span",
            { id: "recommended-note", class: "hint" },
            `Recommended: ${ACTIONS[report.recommended_action].label}`,
          )
        : null,
    );
  }

  private async act(action: Action): Promise<void> {
    const session = this.session;
    if (!session || this.busy) return;
    this.busy = action;
    this.renderActions();
    this.element.setAttribute("aria-busy", "true");
    try {
      const updated = await runAction(session, action, this.health?.data_preservation[action]);
      if (updated) {
        this.ctx.store.upsert(updated);
        showInfo(`${ACTIONS[action].label}: done`);
        if (action === "delete" || action === "cleanup") {
          this.ctx.navigate("#/");
          return;
        }
      }
    } catch (error) {
      showError(error, `${ACTIONS[action].label} “${session.name}”`);
    } finally {
      this.busy = null;
      this.element.removeAttribute("aria-busy");
      if (!this.disposed) {
        this.renderActions();
        await this.loadHealth();
      }
    }
  }

  // --- health --------------------------------------------------------------------------

  private scheduleHealth(): void {
    // Status events come in bursts (progress, status, agent state): one report after them.
    window.clearTimeout(this.healthTimer);
    this.healthTimer = window.setTimeout(() => void this.loadHealth(), 250);
  }

  private async loadHealth(): Promise<void> {
    if (this.disposed) return;
    try {
      const report = await api.get<HealthReport>(
        `/api/sessions/${encodeURIComponent(this.sessionId)}/health`,
      );
      if (this.disposed) return;
      this.health = report;
      this.healthError = null;
      // The report observes the engine; a state the list has not heard of yet shows now.
      const session = this.session;
      if (session && session.health !== report.health)
        this.ctx.store.patch(this.sessionId, { health: report.health });
    } catch (error) {
      if (this.disposed) return;
      this.health = null;
      this.healthError = errorMessage(error);
    }
    this.renderActions();
    this.renderHealth();
  }

  private renderHealth(): void {
    const report = this.health;
    if (!report) {
      replace(
        this.healthBody,
        h("p", { class: "error-box", role: "alert" }, this.healthError ?? "Loading…"),
      );
      return;
    }
    const details = Object.entries(report.details).filter(
      ([, value]) => value !== null && value !== undefined,
    );
    const rec = report.reconciliation;
    const offered = ACTION_ORDER.filter((action) => report.available_actions.includes(action));
    replace(
      this.healthBody,
      h("p", { class: "health-state" }, healthBadge(report.health)),
      report.recommended_action
        ? h(
            "p",
            { class: "recommended" },
            "Recommended: ",
            h("strong", null, ACTIONS[report.recommended_action].label),
            ` (${ACTIONS[report.recommended_action].description})`,
          )
        : null,
      details.length
        ? h(
            "section",
            null,
            h("h3", null, "Details"),
            h(
              "dl",
              { class: "facts" },
              details.flatMap(([key, value]) => [
                h("dt", null, label(key)),
                h("dd", null, typeof value === "object" ? JSON.stringify(value) : String(value)),
              ]),
            ),
          )
        : null,
      rec.attempts || rec.last_error || rec.next_attempt
        ? h(
            "section",
            null,
            h("h3", null, "Automatic recovery"),
            h(
              "dl",
              { class: "facts" },
              h("dt", null, "Attempts"),
              h("dd", null, String(rec.attempts)),
              rec.last_attempt
                ? [h("dt", null, "Last attempt"), h("dd", null, relativeTime(rec.last_attempt))]
                : null,
              rec.last_error ? [h("dt", null, "Last error"), h("dd", null, rec.last_error)] : null,
              rec.next_attempt
                ? [
                    h("dt", null, "Next attempt"),
                    h("dd", null, new Date(rec.next_attempt).toLocaleTimeString()),
                  ]
                : null,
            ),
          )
        : null,
      h(
        "section",
        null,
        h("h3", null, "What you can do"),
        offered.length === 0
          ? h("p", { class: "muted" }, "No action is offered in this state.")
          : h(
              "ul",
              { class: "action-list" },
              offered.map((action) => {
                const keeps = report.data_preservation[action];
                const button = h(
                  "button",
                  {
                    type: "button",
                    class: actionClass(action, report.recommended_action === action, keeps),
                    "data-health-action": action,
                    disabled: this.busy !== null,
                  },
                  ACTIONS[action].label,
                );
                button.addEventListener("click", () => void this.act(action));
                return h(
                  "li",
                  null,
                  button,
                  h(
                    "div",
                    null,
                    h(
                      "p",
                      null,
                      ACTIONS[action].description,
                      report.recommended_action === action
                        ? h("strong", null, " Recommended.")
                        : null,
                    ),
                    h(
                      "p",
                      { class: keeps === false ? "keeps loses" : "keeps" },
                      keeps === false ? "⚠ " : "✓ ",
                      keepsText(keeps),
                    ),
                  ),
                );
              }),
            ),
      ),
    );
  }

  // --- chat ----------------------------------------------------------------------------

  private async loadChat(): Promise<void> {
    const base = `/api/sessions/${encodeURIComponent(this.sessionId)}`;
    try {
      // Subscribe first: its answer marks where live delivery starts; history covers the rest.
      await this.ctx.events.subscribeSession(this.sessionId);
      if (this.disposed) return;
      const detail = (await api.get<{ session: SessionDetail }>(base)).session;
      if (this.disposed) return;
      const { chat_history: history, ...session } = detail;
      this.ctx.store.upsert(session);
      for (const event of history) this.chat.add(event);
      // An event numbered before the subscription but stored just after the read above.
      const last = history.reduce((max, event) => Math.max(max, event.seq ?? 0), 0);
      const more = await api.get<{ messages: ServerEvent[] }>(
        `${base}/messages?after=${last}&limit=1000`,
      );
      for (const event of more.messages) this.chat.add(event);
      this.chat.scrollToEnd();
      // The history is the newest part of a long chat: offer what came before it.
      const first = history[0]?.seq;
      if (first !== undefined && first > 1) {
        const probe = await api.get<{ messages: ServerEvent[] }>(
          `${base}/messages?after=0&limit=1`,
        );
        const oldest = probe.messages[0]?.seq;
        if (oldest !== undefined && oldest < first && !this.disposed) {
          this.chat.offerEarlier(() => this.loadEarlier(base, first));
        }
      }
    } catch (error) {
      if (this.disposed) return;
      showError(error, "Loading the chat");
    }
  }

  /** Page through the stored chat from the start up to ``before`` (errors shown). */
  private async loadEarlier(base: string, before: number): Promise<boolean> {
    let after = 0;
    try {
      while (after < before && !this.disposed) {
        const page = await api.get<{ messages: ServerEvent[]; next_after: number }>(
          `${base}/messages?after=${after}&limit=1000`,
        );
        for (const event of page.messages) {
          if ((event.seq ?? 0) < before) this.chat.add(event);
        }
        if (page.messages.length === 0 || page.next_after <= after) break;
        after = page.next_after;
      }
    } catch (error) {
      showError(error, "Loading earlier messages");
      return false;
    }
    return true;
  }

  private onEvent(event: ServerEvent): void {
    if (event.session_id !== this.sessionId) return;
    if (event.type === "resync") {
      this.chat.clear();
      void this.loadChat();
      return;
    }
    if (event.type === "usage") {
      if (event.usage) this.usagePanel.setTotals(event.usage);
      return;
    }
    if (event.type === "session_changes" || event.type === "pull_request") {
      this.changes.onEvent(event);
      return;
    }
    this.chat.add(event);
  }

  private async send(): Promise<void> {
    const content = this.messageBox.value;
    if (!content.trim()) return;
    this.sendButton.disabled = true;
    try {
      await api.post(`/api/sessions/${encodeURIComponent(this.sessionId)}/message`, { content });
      this.messageBox.value = "";
      this.note("Sent; it appears here when the agent takes it.");
    } catch (error) {
      showError(error, "Sending the message");
    } finally {
      this.sendButton.disabled = this.session?.status !== "running";
      this.messageBox.focus();
    }
  }

  private async attach(input: HTMLInputElement): Promise<void> {
    const chosen = [...(input.files ?? [])];
    input.value = "";
    if (!chosen.length) return;
    try {
      const uploaded = await uploadFiles(this.sessionId, chosen);
      const names = uploaded.map((file) => file.name).join(", ");
      const text = this.messageBox.value.trimEnd();
      this.messageBox.value = `${text}${text ? "\n" : ""}(attached in the working directory: ${names})`;
      this.note(`Uploaded ${names}`);
      this.messageBox.focus();
    } catch (error) {
      showError(error, "Uploading");
    }
  }

  private note(text: string): void {
    this.chatNote.textContent = text;
    this.chatNote.dataset.sticky = "1";
    window.setTimeout(() => {
      delete this.chatNote.dataset.sticky;
      if (!this.disposed) this.sessionChanged();
    }, 4000);
  }

  // --- terminal ------------------------------------------------------------------------

  private showTerminal(): void {
    if (!this.terminal) {
      this.terminal = new TerminalPanel(this.sessionId, this.termHost, (state) =>
        this.terminalState(state),
      );
      this.terminal.term.attachCustomKeyEventHandler((event) => {
        // Alt+1/2/3/4 leave the terminal for another tab; everything else goes to the agent.
        if (event.type === "keydown" && event.altKey && ["1", "2", "3", "4"].includes(event.key)) {
          return false;
        }
        return true;
      });
    }
    const session = this.session;
    if (!this.terminal.isOpen) {
      if (session && (session.status !== "running" || session.archived)) {
        this.terminal.open();
        this.terminal.park(this.notRunningText(session));
      } else {
        this.terminal.open();
      }
    } else {
      requestAnimationFrame(() => this.terminal?.fitNow());
    }
  }

  private notRunningText(session: Session): string {
    if (session.archived) return "The session is archived: unarchive it to use the terminal.";
    if (session.status === "creating") return "The terminal opens when the session is running.";
    return `The session is ${session.status}: start or recreate it to use the terminal.`;
  }

  private updateTerminalForStatus(session: Session): void {
    const terminal = this.terminal;
    if (!terminal?.isOpen) return;
    const running = session.status === "running" && !session.archived;
    if (running && terminal.state.phase !== "open" && terminal.state.phase !== "connecting") {
      terminal.reconnect();
    } else if (!running && terminal.state.phase !== "exited") {
      terminal.park(this.notRunningText(session));
    }
  }

  private terminalState(state: TerminalState): void {
    this.stopCountdown?.();
    this.stopCountdown = null;
    this.termStatus.dataset.phase = state.phase;
    if (state.phase === "waiting" && state.retryAt) {
      this.stopCountdown = countdown(
        this.termStatus,
        state.retryAt,
        `${state.message}; reconnecting`,
      );
    } else {
      this.termStatus.textContent = state.message;
    }
  }
}
