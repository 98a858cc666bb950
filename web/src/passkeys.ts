/**
 * The signed-in user's passkeys (with auth on): listed with when each was made and last
 * used, renamed in place, deleted (never the last one: the daemon refuses it), and a
 * "sign out everywhere" that ends every browser session, this one too. API tokens are
 * not touched by it; they are revoked one by one in the tokens list beside it.
 */

import { api } from "./api";
import { goToLogin, LOGIN_URL } from "./auth";
import { h, relativeTime, replace, uid } from "./dom";
import { confirmDialog, showError, showInfo } from "./ui";

interface PasskeyInfo {
  id: string;
  name: string;
  created_at: string;
  last_used_at: string | null;
}

/** What a passkey is called in the list: its name, or a stand-in for an unnamed one. */
function title(passkey: PasskeyInfo): string {
  return passkey.name || "unnamed passkey";
}

export function passkeysSection(): HTMLElement {
  const table = h("div", { class: "passkey-table" });

  async function load(): Promise<void> {
    try {
      const { passkeys } = await api.get<{ passkeys: PasskeyInfo[] }>("/api/auth/passkeys");
      replace(
        table,
        h(
          "table",
          null,
          h("caption", { class: "visually-hidden" }, "Passkeys"),
          h(
            "thead",
            null,
            h(
              "tr",
              null,
              h("th", { scope: "col" }, "Name"),
              h("th", { scope: "col" }, "Created"),
              h("th", { scope: "col" }, "Last used"),
              h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")),
            ),
          ),
          h(
            "tbody",
            null,
            passkeys.map((passkey) => row(passkey, passkeys.length === 1)),
          ),
        ),
      );
    } catch (error) {
      replace(
        table,
        h(
          "p",
          { class: "error-box", role: "alert" },
          `Could not list passkeys: ${String((error as Error).message)}`,
        ),
      );
    }
  }

  function row(passkey: PasskeyInfo, last: boolean): HTMLElement {
    const nameCell = h("td", null, title(passkey));
    const rename = h(
      "button",
      { type: "button", class: "button plain small", "aria-label": `Rename ${title(passkey)}` },
      "Rename",
    );
    const remove = h(
      "button",
      {
        type: "button",
        class: "button danger-outline small",
        "aria-label": `Delete ${title(passkey)}`,
        // The daemon refuses it anyway; say why before the user tries.
        disabled: last,
        title: last ? "The last passkey cannot be deleted: add another first." : null,
      },
      "Delete",
    );
    rename.addEventListener("click", () => editName(passkey, nameCell));
    remove.addEventListener("click", () => void destroy(passkey));
    return h(
      "tr",
      { "data-passkey-id": passkey.id },
      nameCell,
      h("td", null, relativeTime(passkey.created_at)),
      h("td", null, passkey.last_used_at ? relativeTime(passkey.last_used_at) : "never"),
      h("td", null, h("div", { class: "inline" }, rename, remove)),
    );
  }

  function editName(passkey: PasskeyInfo, cell: HTMLElement): void {
    const input = h("input", {
      type: "text",
      value: passkey.name,
      required: true,
      maxlength: 128,
      autocomplete: "off",
      "aria-label": `New name for ${title(passkey)}`,
    });
    const save = h("button", { type: "submit", class: "button primary small" }, "Save");
    const cancel = h("button", { type: "button", class: "button plain small" }, "Cancel");
    const form = h("form", { class: "inline rename-form" }, input, save, cancel);
    cancel.addEventListener("click", () => void load());
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const name = input.value.trim();
      if (!name) {
        input.focus();
        return;
      }
      save.disabled = true;
      try {
        await api.patch(`/api/auth/passkeys/${encodeURIComponent(passkey.id)}`, { name });
        showInfo(`Renamed to ${name}`);
        await load();
      } catch (error) {
        showError(error, "Renaming the passkey");
        save.disabled = false;
      }
    });
    replace(cell, form);
    input.select();
  }

  async function destroy(passkey: PasskeyInfo): Promise<void> {
    const ok = await confirmDialog(
      `Delete “${title(passkey)}”?`,
      h(
        "p",
        null,
        "It can no longer sign in, and every other browser is signed out (this one stays).",
      ),
      "Delete",
      true,
    );
    if (!ok) return;
    try {
      await api.delete(`/api/auth/passkeys/${encodeURIComponent(passkey.id)}`);
      showInfo(`Deleted ${title(passkey)}`);
      await load();
    } catch (error) {
      showError(error, "Deleting the passkey");
    }
  }

  const everywhere = h(
    "button",
    { type: "button", class: "button danger-outline" },
    "Sign out everywhere",
  );
  everywhere.addEventListener("click", async () => {
    const ok = await confirmDialog(
      "Sign out everywhere?",
      h(
        "p",
        null,
        "Every browser signed in to corral is signed out, this one too. API tokens keep working.",
      ),
      "Sign out everywhere",
      true,
    );
    if (!ok) return;
    try {
      await api.post("/api/auth/logout-all");
      goToLogin();
    } catch (error) {
      showError(error, "Signing out everywhere");
    }
  });

  void load();
  const headingId = uid("passkeys");
  return h(
    "section",
    { class: "passkeys", "aria-labelledby": headingId },
    h("h2", { id: headingId }, "Passkeys"),
    h(
      "p",
      { class: "muted" },
      "Passkeys sign this browser in. ",
      h("a", { href: LOGIN_URL }, "Add a passkey"),
      " on the sign-in page.",
    ),
    table,
    h("div", { class: "inline sign-out-everywhere" }, everywhere),
  );
}
