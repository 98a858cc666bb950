/**
 * The Credentials panel of the system page: per agent the credential corral uses (masked),
 * its kind, where it came from and whether the provider took it (a status mark and the
 * check's words), with Check, Replace… (paste a key, a `claude setup-token` token or a
 * Codex auth.json) and Remove for a stored one. Secrets go to the daemon only: what the
 * user pasted is cleared from the page as soon as it is sent, and nothing shows it again.
 */

import { api, request } from "./api";
import { checkLine } from "./checkline";
import { h, relativeTime, replace, uid } from "./dom";
import { confirmDialog, showError, showInfo } from "./ui";

type Status = "ok" | "invalid" | "unreachable" | "missing" | "unchecked";

interface CredentialEntry {
  agent: "claude" | "codex";
  kind: "api_key" | "oauth_token" | "chatgpt" | null;
  source: string | null;
  masked: string | null;
  status: Status;
  checked_at: string | null;
  message: string;
  stored: boolean;
  account: { plan: string | null; email: string | null } | null;
}

const AGENT_NAMES = { claude: "Claude Code", codex: "Codex" } as const;
const KIND_NAMES = {
  api_key: "API key",
  oauth_token: "subscription token",
  chatgpt: "ChatGPT sign-in",
} as const;
// Status → the checklist's mark styles (style.css `.check[data-state]`).
const STATES: Record<Status, { state: string; mark: string; spoken: string }> = {
  ok: { state: "ok", mark: "✓", spoken: "Works" },
  invalid: { state: "fail", mark: "✗", spoken: "Refused" },
  missing: { state: "fail", mark: "✗", spoken: "Missing" },
  unreachable: { state: "warn", mark: "!", spoken: "Not reached" },
  unchecked: { state: "warn", mark: "?", spoken: "Not checked" },
};
const PASTE_HINT = {
  claude:
    "Paste an API key (sk-ant-api03-…) or the token `claude setup-token` prints for a " +
    "Claude subscription (sk-ant-oat01-…).",
  codex:
    "Paste an OpenAI API key (sk-…), or the whole of ~/.codex/auth.json after `codex login` " +
    "for a ChatGPT sign-in.",
} as const;

/** The body a pasted text becomes: a JSON object is an auth.json, anything else a secret. */
function bodyOf(text: string): { secret: string } | { auth_json: unknown } {
  if (text.startsWith("{")) {
    try {
      return { auth_json: JSON.parse(text) as unknown };
    } catch {
      // not JSON after all: the daemon says what is wrong with it as a secret
    }
  }
  return { secret: text };
}

export function credentialsPanel(onChange: () => void = () => {}): HTMLElement {
  const titleId = uid("credentials-title");
  const list = h("ul", { class: "checklist credentials-list", "aria-labelledby": titleId });
  const section = h(
    "section",
    { class: "credentials-panel", "aria-labelledby": titleId },
    h("h3", { id: titleId }, "Credentials"),
    h(
      "p",
      { class: "muted" },
      "What each agent signs in with. Sessions never hold it: they reach the provider " +
        "through corral. Also from the terminal: corral login claude|codex.",
    ),
    list,
  );

  async function load(): Promise<void> {
    try {
      const { credentials } = await api.get<{ credentials: CredentialEntry[] }>(
        "/api/credentials",
      );
      replace(list, credentials.map(item));
    } catch (error) {
      replace(
        list,
        h(
          "li",
          { class: "error-box", role: "alert" },
          `Could not list credentials: ${String((error as Error).message)}`,
        ),
      );
    }
  }

  async function act(work: () => Promise<unknown>, what: string, done?: string): Promise<void> {
    try {
      await work();
      if (done) showInfo(done);
    } catch (error) {
      showError(error, what);
    }
    await load();
    onChange();
  }

  function item(entry: CredentialEntry): HTMLLIElement {
    const name = AGENT_NAMES[entry.agent];
    const { state, mark, spoken } = STATES[entry.status];
    const facts: (string | HTMLElement)[] = [];
    if (entry.kind) {
      facts.push(KIND_NAMES[entry.kind], " ", h("code", { class: "masked" }, entry.masked ?? ""));
      facts.push(` from ${entry.source ?? "?"}`);
      const who = [entry.account?.email, entry.account?.plan].filter(Boolean).join(", ");
      if (who) facts.push(` (${who})`);
    }
    const checked = entry.checked_at ? ` · checked ${relativeTime(entry.checked_at)}` : "";

    const check = h("button", { type: "button", class: "button plain small" }, "Check");
    check.addEventListener("click", () => {
      check.disabled = true;
      void act(
        () => api.post(`/api/credentials/${entry.agent}/check`),
        `Checking ${name}'s credential`,
      );
    });
    const edit = h(
      "button",
      { type: "button", class: "button plain small", "aria-expanded": "false" },
      entry.kind ? "Replace…" : "Add…",
    );
    const remove = h("button", { type: "button", class: "button danger-outline small" }, "Remove");
    remove.addEventListener("click", async () => {
      const ok = await confirmDialog(
        `Remove ${name}'s stored credential?`,
        h("p", null, "corral then uses the next one it finds (config, environment, file)."),
        "Remove",
        true,
      );
      if (ok) {
        await act(
          () => api.delete(`/api/credentials/${entry.agent}`),
          `Removing ${name}'s credential`,
          `Removed ${name}'s stored credential`,
        );
      }
    });

    const pasteId = uid("paste");
    const paste = h("textarea", {
      id: pasteId,
      rows: 3,
      autocomplete: "off",
      spellcheck: "false",
      class: "secret",
    });
    const save = h("button", { type: "submit", class: "button primary small" }, "Save and check");
    const cancel = h("button", { type: "button", class: "button plain small" }, "Cancel");
    const form = h(
      "form",
      { class: "credential-form", hidden: true },
      h(
        "div",
        { class: "field" },
        h("label", { for: pasteId }, `${name}: new credential`),
        h("p", { class: "hint" }, PASTE_HINT[entry.agent]),
        paste,
      ),
      h("div", { class: "inline" }, save, cancel),
    );
    const close = () => {
      paste.value = "";
      form.hidden = true;
      edit.setAttribute("aria-expanded", "false");
    };
    edit.addEventListener("click", () => {
      form.hidden = false;
      edit.setAttribute("aria-expanded", "true");
      paste.focus();
    });
    cancel.addEventListener("click", close);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = paste.value.trim();
      if (!text) {
        paste.focus();
        return;
      }
      const body = bodyOf(text);
      close(); // the pasted secret leaves the page now, whatever the answer
      save.disabled = true;
      void act(
        () => request("PUT", `/api/credentials/${entry.agent}`, body),
        `Saving ${name}'s credential`,
        `Saved ${name}'s credential`,
      );
    });

    return checkLine(
      {
        attrs: {
          class: "check credential",
          "data-agent": entry.agent,
          "data-status": entry.status,
        },
        state,
        mark,
        spoken,
        title: name,
      },
      entry.kind ? h("p", { class: "credential-facts" }, facts) : null,
      h("p", { class: "check-summary credential-message" }, `${entry.message}${checked}`),
      h(
        "div",
        { class: "check-fix credential-actions" },
        entry.kind ? check : null,
        edit,
        entry.stored ? remove : null,
      ),
      form,
    );
  }

  void load();
  return section;
}
