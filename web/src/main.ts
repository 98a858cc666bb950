/**
 * corral's web UI: the page shell, the live session list, the router and the shortcuts.
 *
 * Routes live in the URL hash (``#/``, ``#/new``, ``#/s/<id>/<tab>``) so the daemon serves
 * one page. The list is loaded once over REST and then kept current by the page's single
 * events socket; after a reconnect it is loaded again, because lifecycle events of ``"*"``
 * are not replayed. Wide screens show the list beside the open view; a phone shows one of
 * them at a time.
 */

import "@xterm/xterm/css/xterm.css";
import "./style.css";

import { api, onUnauthorized } from "./api";
import { type AuthInfo, authStatus, goToLogin, signOut } from "./auth";
import { createView } from "./create";
import { h, relativeTime, replace } from "./dom";
import { type ConnectionState, EventsClient } from "./events";
import { SessionView, type Tab, TABS } from "./session";
import { SessionStore } from "./store";
import { SystemUi } from "./system";
import { tokensView } from "./tokens";
import type { ServerEvent, Session } from "./types";
import {
  agentBadge,
  countdown,
  dialog,
  healthBadge,
  mountNotices,
  progressBar,
  showError,
  statusBadge,
} from "./ui";
import { listCost } from "./usage";

const store = new SessionStore();
const events = new EventsClient();
const system = new SystemUi();
let auth: AuthInfo = {
  available: false,
  enabled: false,
  signedIn: true,
  viaCookie: false,
  user: null,
};
let current: SessionView | null = null;
let configCache: Promise<Record<string, unknown> | null> | null = null;

/** For tests and for poking at the page from the console. */
declare global {
  interface Window {
    __corral: unknown;
  }
}
window.__corral = {
  store,
  events,
  get term() {
    return current?.activeTerminal?.term ?? null;
  },
  get view() {
    return current;
  },
  system: system.monitor,
};

// --- shell -----------------------------------------------------------------------------

const connection = h("span", { class: "connection", role: "status", "aria-live": "polite" });
const retry = h(
  "button",
  { type: "button", class: "button plain small", hidden: true },
  "Retry now",
);
retry.addEventListener("click", () => events.retryNow());
const newButton = h(
  "a",
  { href: "#/new", class: "button primary", "aria-keyshortcuts": "n" },
  "New session",
);
const helpButton = h(
  "button",
  {
    type: "button",
    class: "button plain",
    "aria-keyshortcuts": "?",
    "aria-label": "Keyboard shortcuts",
  },
  "?",
);
helpButton.addEventListener("click", () => void showShortcuts());
const accountArea = h("div", { class: "account" });

const filter = h("input", {
  type: "search",
  id: "session-filter",
  placeholder: "Filter sessions",
  autocomplete: "off",
  "aria-keyshortcuts": "/",
});
const showArchived = h("input", { type: "checkbox", id: "show-archived" });
const listCount = h("p", { class: "list-count", "aria-live": "polite" });
const list = h("ul", { class: "session-list", id: "session-list" });
const sidebar = h(
  "nav",
  { class: "sidebar", "aria-label": "Sessions" },
  h(
    "div",
    { class: "sidebar-tools" },
    h("label", { for: "session-filter", class: "visually-hidden" }, "Filter sessions"),
    filter,
    h(
      "div",
      { class: "field checkbox" },
      showArchived,
      h("label", { for: "show-archived" }, "Show archived"),
    ),
  ),
  listCount,
  list,
);
const main = h("main", { id: "main", class: "main", tabindex: "-1" });

function mountShell(root: HTMLElement): void {
  // The URL's hash holds the route, so the skip link moves focus itself.
  const skip = h("a", { href: "#main", class: "skip-link" }, "Skip to content");
  skip.addEventListener("click", (event) => {
    event.preventDefault();
    main.focus();
  });
  replace(
    root,
    skip,
    h(
      "header",
      { class: "topbar" },
      h("a", { href: "#/", class: "brand" }, "corral"),
      h("div", { class: "topbar-state" }, connection, retry),
      h(
        "div",
        { class: "topbar-actions" },
        system.link,
        newButton,
        helpButton,
        accountArea,
      ),
    ),
    system.banner,
    h("div", { class: "layout" }, sidebar, main),
  );
  mountNotices(root);
}

let stopRetryCountdown: (() => void) | null = null;
function renderConnection(state: ConnectionState): void {
  stopRetryCountdown?.();
  stopRetryCountdown = null;
  connection.dataset.phase = state.phase;
  retry.hidden = state.phase !== "waiting";
  if (state.phase === "open") connection.textContent = "Live";
  else if (state.phase === "connecting")
    connection.textContent = state.reconnect ? "Reconnecting…" : "Connecting…";
  else if (state.retryAt)
    stopRetryCountdown = countdown(connection, state.retryAt, "Disconnected; retrying");
}

function renderAccount(): void {
  // Only with auth on: tokens and sign-out mean nothing without it.
  if (!auth.available || !auth.enabled || !auth.signedIn) {
    accountArea.replaceChildren();
    return;
  }
  let out: HTMLButtonElement | null = null;
  if (auth.viaCookie) {
    out = h("button", { type: "button", class: "button plain" }, "Sign out");
    out.addEventListener("click", () =>
      signOut().catch((error) => showError(error, "Signing out")),
    );
  }
  replace(
    accountArea,
    auth.user ? h("span", { class: "muted user" }, auth.user) : null,
    h("a", { href: "#/tokens", class: "button plain" }, "Passkeys and API tokens"),
    out,
  );
}

// --- the session list ------------------------------------------------------------------

const items = new Map<string, HTMLLIElement>();

function matches(session: Session, text: string): boolean {
  if (!text) return true;
  const haystack = [
    session.name,
    session.branch_name,
    session.description,
    ...session.tags,
    ...session.repositories.map((r) => r.path),
  ]
    .join(" ")
    .toLowerCase();
  return text
    .toLowerCase()
    .split(/\s+/)
    .every((word) => haystack.includes(word));
}

function visibleSessions(): Session[] {
  const text = filter.value.trim();
  return store.list().filter((s) => (showArchived.checked || !s.archived) && matches(s, text));
}

function renderItem(session: Session): HTMLLIElement {
  let item = items.get(session.id);
  if (!item) {
    item = h("li", { class: "session-item", "data-session-id": session.id });
    items.set(session.id, item);
  }
  let link = item.querySelector<HTMLAnchorElement>("a");
  if (!link) {
    link = h("a", { href: `#/s/${session.id}`, class: "session-link" });
    item.append(link);
  }
  // Children replaced, the link kept: a focused entry keeps focus through live updates.
  replace(
    link,
    h("span", { class: "session-name" }, session.name),
    h(
      "span",
      { class: "badges" },
      statusBadge(session.status),
      session.archived ? h("span", { class: "badge tone-muted" }, "archived") : null,
      session.health !== "healthy" ? healthBadge(session.health) : null,
      session.status === "running" && session.agent_state !== "unknown"
        ? agentBadge(session.agent_state)
        : null,
    ),
    h("span", { class: "session-branch" }, session.branch_name),
    h(
      "span",
      { class: "session-repos" },
      session.repositories.map((r) => r.path.split("/").pop() ?? r.path).join(", "),
      ` · ${relativeTime(session.created_at)}`,
    ),
    listCost(session),
    progressBar(session.progress),
  );
  const selected = current?.sessionId === session.id;
  if (selected) link.setAttribute("aria-current", "page");
  else link.removeAttribute("aria-current");
  return item;
}

function renderList(): void {
  const sessions = visibleSessions();
  const wanted = new Set(sessions.map((s) => s.id));
  for (const [id, item] of items) {
    if (!wanted.has(id)) {
      item.remove();
      if (!store.get(id)) items.delete(id);
    }
  }
  sessions.forEach((session, index) => {
    const item = renderItem(session);
    // Move only what is out of place, so the focused entry is not taken out of the page.
    if (list.children[index] !== item) list.insertBefore(item, list.children[index] ?? null);
  });
  const total = store.sessions.size;
  if (!store.loaded) listCount.textContent = "Loading sessions…";
  else if (total === 0) {
    replace(listCount, "No sessions yet. ", h("a", { href: "#/new" }, "Create one"), ".");
  } else {
    listCount.textContent = `${sessions.length} of ${total} session${total === 1 ? "" : "s"}`;
  }
}

/** One session changed: redraw its entry alone when it stays where it is (the common case:
 * status and agent-state events), else the whole list. */
function onStoreChange(changed: string | null): void {
  const session = changed ? store.get(changed) : undefined;
  const item = changed ? items.get(changed) : undefined;
  const stays =
    session &&
    item?.isConnected &&
    (showArchived.checked || !session.archived) &&
    matches(session, filter.value.trim());
  if (session && stays) renderItem(session);
  else renderList();
}

filter.addEventListener("input", renderList);
filter.addEventListener("keydown", (event) => {
  // Escape leaves the filter (cleared), so the single-key shortcuts work again.
  if (event.key === "Escape") {
    filter.value = "";
    renderList();
    filter.blur();
  }
});
showArchived.addEventListener("change", renderList);

async function loadList(): Promise<void> {
  try {
    const answer = await api.get<{ sessions: Session[] }>(
      "/api/sessions?include_archived=true&limit=1000",
    );
    store.reset(answer.sessions);
  } catch (error) {
    showError(error, "Loading the sessions");
  }
}

// --- lifecycle events ------------------------------------------------------------------

const refetchTimers = new Map<string, number>();
/** Fetch one session in full (error message, container, progress) after a burst of events. */
function refetchSoon(id: string): void {
  window.clearTimeout(refetchTimers.get(id));
  refetchTimers.set(
    id,
    window.setTimeout(async () => {
      refetchTimers.delete(id);
      // A session being deleted has nothing more to tell; its end comes as an event.
      const known = store.get(id);
      if (known?.status === "deleting") return;
      try {
        const answer = await api.get<{ session: Session & { chat_history?: unknown } }>(
          `/api/sessions/${id}`,
        );
        const { chat_history: _ignored, ...session } = answer.session;
        // Deleted while the answer was on its way: the event said so, keep it gone.
        if (known && !store.get(id)) return;
        store.upsert(session);
      } catch {
        // Gone meanwhile: the session_deleted event (or the next list load) says so.
      }
    }, 200),
  );
}

function onEvent(event: ServerEvent): void {
  if (event.type === "error") {
    // Answers to subscribes are handled by the events client; anything else is shown.
    showError(new Error(typeof event.message === "string" ? event.message : "error"), "Events");
    return;
  }
  const id = event.session_id;
  if (!id || id === "*") return;
  switch (event.type) {
    case "session_created":
    case "session_updated":
      if (event.session) store.upsert(event.session);
      break;
    case "session_status": {
      const fields: Partial<Session> = {};
      if (event.status) fields.status = event.status;
      if (event.health) fields.health = event.health;
      if (event.agent_state) fields.agent_state = event.agent_state;
      if ("agent_state_reason" in event) fields.agent_state_reason = event.agent_state_reason;
      if (typeof event.archived === "boolean") fields.archived = event.archived;
      if (event.status && event.status !== "creating" && event.status !== "deleting")
        fields.progress = null;
      const before = store.get(id);
      if (before) store.patch(id, fields);
      // agent_state flips are frequent and the event carries them whole; a change of status
      // or health may come with an error message or container the event does not carry.
      if (!before || before.status !== event.status || before.health !== event.health) {
        refetchSoon(id);
      }
      break;
    }
    case "session_progress":
      store.patch(id, { progress: event.progress ?? null });
      break;
    case "usage":
      if (event.usage && store.get(id))
        store.patch(id, { cost_usd: event.usage.cost_usd, total_tokens: event.usage.total_tokens });
      break;
    case "session_deleted":
      store.remove(id);
      break;
    case "subscribe_failed":
      if (current?.sessionId === id)
        showError(new Error(String(event.message)), "Following the session");
      break;
  }
}

// --- router ----------------------------------------------------------------------------

type Route =
  | { name: "home" }
  | { name: "new" }
  | { name: "tokens" }
  | { name: "system" }
  | { name: "session"; id: string; tab: Tab };

function parseRoute(): Route {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  if (parts[0] === "new") return { name: "new" };
  if (parts[0] === "tokens") return { name: "tokens" };
  if (parts[0] === "system") return { name: "system" };
  if (parts[0] === "s" && parts[1]) {
    const tab = TABS.includes(parts[2] as Tab) ? (parts[2] as Tab) : "chat";
    return { name: "session", id: decodeURIComponent(parts[1]), tab };
  }
  return { name: "home" };
}

/** Go to ``hash`` now: keys pressed in quick succession each see the route the last one set
 * (the hashchange that follows finds the route already in place). */
function navigate(hash: string): void {
  if (location.hash !== hash) location.hash = hash;
  route();
}

let routed: string | null = null;

function route(): void {
  // navigate() routes at once; the hashchange that follows finds nothing new to do.
  if (location.hash === routed) return;
  routed = location.hash;
  const r = parseRoute();
  document.body.dataset.view = r.name === "home" ? "list" : "detail";
  if (r.name === "session" && current?.sessionId === r.id) {
    current.setTab(r.tab);
    document.title = `${store.get(r.id)?.name ?? "session"} · corral`;
    renderList();
    return;
  }
  current?.dispose();
  current = null;
  // Where a new user lands, the first-run checklist (shown when something is missing).
  if (r.name === "new" || r.name === "home") system.refresh();
  if (r.name === "new") {
    replace(main, system.slot, createView({ store, navigate, defaultImage }));
    document.title = "New session · corral";
  } else if (r.name === "system") {
    replace(main, system.view());
    document.title = "System · corral";
  } else if (r.name === "tokens") {
    replace(main, tokensView());
    document.title = "Passkeys and API tokens · corral";
  } else if (r.name === "session") {
    current = new SessionView(r.id, { store, events, navigate, aiMetadata });
    replace(main, current.element);
    current.setTab(r.tab);
    document.title = `${store.get(r.id)?.name ?? "session"} · corral`;
  } else {
    replace(
      main,
      h(
        "div",
        { class: "view empty-view" },
        h("div", { class: "system-place" }),
        h("h2", null, "Sessions"),
        h(
          "p",
          null,
          "Pick a session from the list, or ",
          h("a", { href: "#/new" }, "create a new one"),
          ".",
        ),
        h("p", { class: "hint" }, "Press ? for keyboard shortcuts."),
      ),
    );
    document.title = "corral";
  }
  placeChecklist();
  renderList();
}

/** On the home view the first-run checklist sits above the sessions text; a phone shows the
 * list alone there, so it goes above the list instead. */
const narrow = window.matchMedia("(max-width: 760px)");
function placeChecklist(): void {
  const place = main.querySelector(".system-place");
  if (!place) return;
  if (narrow.matches) sidebar.insertBefore(system.slot, listCount);
  else place.append(system.slot);
}
narrow.addEventListener("change", placeChecklist);

/** GET /api/config once per page (null when it could not be read). */
function loadConfig(): Promise<Record<string, unknown> | null> {
  configCache ??= api.get<Record<string, unknown>>("/api/config").catch(() => null);
  return configCache;
}

function defaultImage(): Promise<string | null> {
  return loadConfig().then((config) => {
    const docker = config?.docker as { default_image?: string } | undefined;
    return docker?.default_image ?? null;
  });
}

function aiMetadata(): Promise<boolean | null> {
  return loadConfig().then((config) => {
    const section = config?.metadata as { ai_metadata?: unknown } | undefined;
    return typeof section?.ai_metadata === "boolean" ? section.ai_metadata : null;
  });
}

// --- keyboard shortcuts ----------------------------------------------------------------

const SHORTCUTS: [string, string][] = [
  ["n", "New session"],
  ["/", "Filter the session list"],
  ["j / k", "Next / previous session"],
  ["c / t / h / d", "Chat, terminal, health, changes (diff) of the open session"],
  ["Alt+1 / 2 / 3 / 4", "Chat, terminal, health, changes (works inside the terminal too)"],
  ["Enter", "Send the message (Shift+Enter: new line)"],
  ["Ctrl+Enter", "Create the session (in the form)"],
  ["?", "This list"],
];

async function showShortcuts(): Promise<void> {
  await dialog(
    "Keyboard shortcuts",
    h(
      "dl",
      { class: "shortcuts" },
      SHORTCUTS.flatMap(([keys, what]) => [
        h("dt", null, h("kbd", null, keys)),
        h("dd", null, what),
      ]),
    ),
    [{ label: "Close", value: null, kind: "primary", autofocus: true }],
    null,
  );
}

function typing(target: EventTarget | null): boolean {
  if (!(target instanceof HTMLElement)) return false;
  if (target.closest(".xterm")) return true;
  return target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName);
}

function moveSelection(step: number): void {
  const sessions = visibleSessions();
  if (!sessions.length) return;
  const index = sessions.findIndex((s) => s.id === current?.sessionId);
  const next = sessions[index < 0 ? 0 : Math.min(Math.max(index + step, 0), sessions.length - 1)];
  if (next) {
    navigate(`#/s/${next.id}`);
    items.get(next.id)?.querySelector("a")?.focus();
  }
}

function openTab(tab: Tab): void {
  if (current) navigate(`#/s/${current.sessionId}/${tab}`);
  current?.setTab(tab, true);
}

document.addEventListener("keydown", (event) => {
  if (event.defaultPrevented || document.querySelector("dialog[open]")) return;
  if (event.altKey && !event.ctrlKey && !event.metaKey && ["1", "2", "3", "4"].includes(event.key)) {
    const tab = TABS[Number(event.key) - 1];
    if (tab && current) {
      event.preventDefault();
      openTab(tab);
    }
    return;
  }
  if (event.altKey || event.ctrlKey || event.metaKey || typing(event.target)) return;
  const actions: Record<string, () => void> = {
    n: () => navigate("#/new"),
    "/": () => filter.focus(),
    j: () => moveSelection(1),
    k: () => moveSelection(-1),
    c: () => openTab("chat"),
    t: () => openTab("terminal"),
    h: () => openTab("health"),
    d: () => openTab("changes"),
    "?": () => void showShortcuts(),
  };
  const action = actions[event.key];
  if (action) {
    event.preventDefault();
    action();
  }
});

// The terminal's colours follow the system theme like the rest of the page.
window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
  current?.activeTerminal?.applyTheme();
});

// --- start -----------------------------------------------------------------------------

async function start(): Promise<void> {
  const root = document.getElementById("app");
  if (!root) return;
  mountShell(root);
  try {
    auth = await authStatus();
  } catch (error) {
    showError(error, "Checking sign-in");
  }
  if (auth.enabled && !auth.signedIn) {
    goToLogin();
    return;
  }
  onUnauthorized(() => {
    if (auth.available) goToLogin();
  });
  renderAccount();
  store.subscribe(onStoreChange);
  events.onState((state) => {
    renderConnection(state);
    // "*" is not replayed: after a reconnect the list is loaded again.
    if (state.phase === "open" && state.reconnect) {
      void loadList();
      system.refresh();
    }
  });
  events.onEvent(onEvent);
  events.subscribeAll();
  events.start();
  window.addEventListener("hashchange", route);
  route();
  await loadList();
  window.setInterval(renderList, 60_000); // relative times ("5 min ago") stay true
}

void start();
