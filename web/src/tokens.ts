/**
 * API tokens (with auth on): list, create (the secret is shown once, the daemon keeps only
 * its hash) and revoke. Tokens let scripts and the CLI use the API as the signed-in user.
 * The same view shows the user's passkeys first (passkeys.ts).
 */

import { api } from "./api";
import { h, relativeTime, replace, uid } from "./dom";
import { passkeysSection } from "./passkeys";
import { confirmDialog, showError, showInfo } from "./ui";

interface TokenInfo {
  id: string;
  name: string;
  hint: string;
  created_at: string;
  last_used_at: string | null;
}

export function tokensView(): HTMLElement {
  const nameId = uid("token-name");
  const name = h("input", {
    id: nameId,
    type: "text",
    required: true,
    maxlength: 128,
    autocomplete: "off",
    placeholder: "what it is for, e.g. ci-script",
  });
  const create = h("button", { type: "submit", class: "button primary" }, "Create token");
  const secretBox = h("div", { class: "secret-box", role: "status", hidden: true });
  const table = h("div", { class: "token-table" });
  const form = h(
    "form",
    { class: "token-form" },
    h("div", { class: "field" }, h("label", { for: nameId }, "New token's name"), name),
    create,
  );

  async function load(): Promise<void> {
    try {
      const { tokens } = await api.get<{ tokens: TokenInfo[] }>("/api/auth/tokens");
      replace(
        table,
        tokens.length === 0
          ? h("p", { class: "muted" }, "No API tokens yet.")
          : h(
              "table",
              null,
              h("caption", { class: "visually-hidden" }, "API tokens"),
              h(
                "thead",
                null,
                h(
                  "tr",
                  null,
                  h("th", { scope: "col" }, "Name"),
                  h("th", { scope: "col" }, "Starts with"),
                  h("th", { scope: "col" }, "Created"),
                  h("th", { scope: "col" }, "Last used"),
                  h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")),
                ),
              ),
              h(
                "tbody",
                null,
                tokens.map((token) => {
                  const revoke = h(
                    "button",
                    {
                      type: "button",
                      class: "button danger-outline small",
                      "aria-label": `Revoke ${token.name}`,
                    },
                    "Revoke",
                  );
                  revoke.addEventListener("click", () => void remove(token));
                  return h(
                    "tr",
                    { "data-token-id": token.id },
                    h("td", null, token.name),
                    h(
                      "td",
                      null,
                      h("code", null, token.hint.endsWith("…") ? token.hint : `${token.hint}…`),
                    ),
                    h("td", null, relativeTime(token.created_at)),
                    h("td", null, token.last_used_at ? relativeTime(token.last_used_at) : "never"),
                    h("td", null, revoke),
                  );
                }),
              ),
            ),
      );
    } catch (error) {
      replace(
        table,
        h(
          "p",
          { class: "error-box", role: "alert" },
          `Could not list tokens: ${String((error as Error).message)}`,
        ),
      );
    }
  }

  async function remove(token: TokenInfo): Promise<void> {
    const ok = await confirmDialog(
      `Revoke “${token.name}”?`,
      h("p", null, "Scripts using this token stop working at once."),
      "Revoke",
      true,
    );
    if (!ok) return;
    try {
      await api.delete(`/api/auth/tokens/${encodeURIComponent(token.id)}`);
      showInfo(`Revoked ${token.name}`);
      await load();
    } catch (error) {
      showError(error, "Revoking the token");
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!name.value.trim()) {
      name.focus();
      return;
    }
    create.disabled = true;
    try {
      const answer = await api.post<{ token: TokenInfo; secret: string }>("/api/auth/tokens", {
        name: name.value.trim(),
      });
      const secretId = uid("secret");
      const copy = h("button", { type: "button", class: "button plain small" }, "Copy");
      copy.addEventListener("click", () => {
        navigator.clipboard.writeText(answer.secret).then(
          () => showInfo("Copied"),
          (error) => showError(error, "Copying"),
        );
      });
      replace(
        secretBox,
        h(
          "p",
          null,
          h("strong", null, `Token “${answer.token.name}” created. `),
          "Copy it now: it is not shown again.",
        ),
        h(
          "div",
          { class: "inline" },
          h("input", {
            id: secretId,
            type: "text",
            readonly: true,
            value: answer.secret,
            "aria-label": "Token secret",
            class: "secret",
          }),
          copy,
        ),
        h("p", { class: "hint" }, "Use it as: Authorization: Bearer <token>"),
      );
      secretBox.hidden = false;
      name.value = "";
      await load();
      secretBox.querySelector<HTMLInputElement>("input")?.select();
    } catch (error) {
      showError(error, "Creating the token");
    } finally {
      create.disabled = false;
    }
  });

  void load();
  return h(
    "div",
    { class: "view tokens-view" },
    passkeysSection(),
    h("h2", null, "API tokens"),
    h("p", { class: "muted" }, "Tokens let scripts and the command line use the API as you."),
    form,
    secretBox,
    table,
  );
}
