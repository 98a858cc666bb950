/**
 * A session's name, description and tags: edited by hand (``PATCH /metadata``) or rewritten
 * by a model from the chat (``POST /regenerate-metadata``, offered only when the daemon's
 * ``metadata.ai_metadata`` is on, as ``GET /api/config`` says).
 *
 * The editor lives beside the session header, not in it: the header is redrawn on every
 * live event, and a half-typed edit must survive that. The daemon's answer goes into the
 * store, so the header, the list and the title follow (the ``session_updated`` event that
 * comes after says the same again).
 */

import { ApiError, api, errorMessage } from "./api";
import { h, replace, uid } from "./dom";
import type { SessionStore } from "./store";
import type { Session } from "./types";
import { problemList } from "./ui";

export interface MetadataContext {
  store: SessionStore;
  /** Whether to offer "Regenerate with AI": true, false, or null when unknown. */
  aiMetadata: () => Promise<boolean | null>;
}

/** "a, b ,, c" → ["a", "b", "c"]: trimmed, empty ones dropped, each once. */
export function parseTags(text: string): string[] {
  const tags = text
    .split(",")
    .map((tag) => tag.trim())
    .filter(Boolean);
  return [...new Set(tags)];
}

export class MetadataEditor {
  readonly element: HTMLElement;
  private readonly editButton: HTMLButtonElement;
  private readonly aiButton: HTMLButtonElement;
  private readonly form: HTMLFormElement;
  private readonly nameInput: HTMLInputElement;
  private readonly descriptionInput: HTMLTextAreaElement;
  private readonly tagsInput: HTMLInputElement;
  private readonly saveButton: HTMLButtonElement;
  private readonly errors: HTMLElement;
  private readonly status: HTMLElement;
  private saving = false;
  private regenerating = false;
  private disposed = false;
  private statusTimer: number | undefined;

  constructor(
    readonly sessionId: string,
    private readonly ctx: MetadataContext,
  ) {
    const formId = uid("meta-form");
    this.editButton = h(
      "button",
      {
        type: "button",
        class: "button plain small",
        "aria-expanded": "false",
        "aria-controls": formId,
      },
      "Edit details",
    );
    this.editButton.addEventListener("click", () => {
      if (this.form.hidden) this.open();
      else this.close();
    });
    this.aiButton = h(
      "button",
      {
        type: "button",
        class: "button plain small",
        title: "Have a model write the name, description and tags from the chat",
        hidden: true,
      },
      "Regenerate with AI",
    );
    this.aiButton.addEventListener("click", () => void this.regenerate());

    const nameId = uid("meta-name");
    this.nameInput = h("input", {
      id: nameId,
      name: "name",
      type: "text",
      pattern: "[a-z0-9][a-z0-9_-]{0,62}",
      maxlength: 63,
      autocomplete: "off",
      spellcheck: "false",
      "aria-describedby": `${nameId}-hint`,
    });
    const descriptionId = uid("meta-description");
    this.descriptionInput = h("textarea", {
      id: descriptionId,
      name: "description",
      rows: 3,
      maxlength: 2000,
    });
    const tagsId = uid("meta-tags");
    this.tagsInput = h("input", {
      id: tagsId,
      name: "tags",
      type: "text",
      autocomplete: "off",
      "aria-describedby": `${tagsId}-hint`,
    });
    this.saveButton = h("button", { type: "submit", class: "button primary" }, "Save");
    const cancel = h("button", { type: "button", class: "button plain" }, "Cancel");
    cancel.addEventListener("click", () => this.close());
    this.errors = h("div", {
      class: "form-errors meta-errors",
      role: "alert",
      hidden: true,
      tabindex: "-1",
    });
    this.status = h("p", { class: "meta-status", role: "status" });

    this.form = h(
      "form",
      {
        id: formId,
        class: "meta-form",
        "aria-label": "Edit name, description and tags",
        hidden: true,
        novalidate: true,
      },
      h(
        "div",
        { class: "field" },
        h("label", { for: nameId }, "Name"),
        this.nameInput,
        h(
          "small",
          { id: `${nameId}-hint`, class: "hint" },
          "Lower case letters, digits, - and _ (up to 63); the branch keeps its name",
        ),
      ),
      h(
        "div",
        { class: "field" },
        h("label", { for: descriptionId }, "Description"),
        this.descriptionInput,
      ),
      h(
        "div",
        { class: "field" },
        h("label", { for: tagsId }, "Tags"),
        this.tagsInput,
        h(
          "small",
          { id: `${tagsId}-hint`, class: "hint" },
          "Separated by commas; up to 50, each up to 64 characters",
        ),
      ),
      h("div", { class: "form-buttons" }, this.saveButton, cancel),
    );
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.save();
    });
    this.form.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        this.close();
      }
    });
    // A reason shown for the last attempt stops being true once the form changes.
    this.form.addEventListener("input", () => {
      this.errors.hidden = true;
      this.nameInput.removeAttribute("aria-invalid");
    });

    this.element = h(
      "section",
      { class: "meta-editor", "aria-label": "Name, description and tags" },
      h("div", { class: "meta-tools" }, this.editButton, this.aiButton, this.status),
      this.errors,
      this.form,
    );

    void ctx.aiMetadata().then((on) => {
      // Unknown (the config did not load): offer it; the daemon's 409 then says why not.
      if (!this.disposed) this.aiButton.hidden = on === false;
    });
  }

  get session(): Session | undefined {
    return this.ctx.store.get(this.sessionId);
  }

  /** The session is gone, or the view closed: no answer arriving later touches the page. */
  dispose(): void {
    this.disposed = true;
    window.clearTimeout(this.statusTimer);
  }

  /** The session is (or is no longer) there to edit. */
  setAvailable(available: boolean): void {
    this.element.hidden = !available;
  }

  /** Say how it went; a done-message leaves after a while, progress stays until replaced. */
  private say(text: string, transient = false): void {
    window.clearTimeout(this.statusTimer);
    this.status.textContent = text;
    if (transient) this.statusTimer = window.setTimeout(() => this.say(""), 6000);
  }

  private fill(session: Session): void {
    this.nameInput.value = session.name;
    this.descriptionInput.value = session.description;
    this.tagsInput.value = session.tags.join(", ");
  }

  private open(): void {
    const session = this.session;
    if (!session) return;
    this.fill(session);
    this.errors.hidden = true;
    this.nameInput.removeAttribute("aria-invalid");
    this.form.hidden = false;
    this.editButton.setAttribute("aria-expanded", "true");
    this.nameInput.focus();
  }

  private close(): void {
    this.form.hidden = true;
    this.errors.hidden = true;
    this.editButton.setAttribute("aria-expanded", "false");
    this.editButton.focus();
  }

  private showErrors(context: string, error: unknown, field?: HTMLElement): void {
    const reason =
      error instanceof ApiError && !Array.isArray(error.details)
        ? (error.details as { reason?: unknown } | undefined)?.reason
        : undefined;
    replace(
      this.errors,
      h(
        "p",
        null,
        h("strong", null, `${context}: `),
        errorMessage(error),
        typeof reason === "string"
          ? h("span", { class: "reason" }, ` (${reason.replaceAll("_", " ")})`)
          : null,
      ),
      problemList(error),
    );
    this.errors.hidden = false;
    if (field) {
      field.setAttribute("aria-invalid", "true");
      field.focus();
    } else {
      this.errors.focus();
    }
  }

  private async save(): Promise<void> {
    const session = this.session;
    if (!session || this.saving) return;
    const body: { name?: string; description?: string; tags?: string[] } = {};
    const name = this.nameInput.value.trim();
    if (name !== session.name) body.name = name;
    if (this.descriptionInput.value !== session.description) {
      body.description = this.descriptionInput.value;
    }
    const tags = parseTags(this.tagsInput.value);
    if (tags.join("\n") !== session.tags.join("\n")) body.tags = tags;
    if (!Object.keys(body).length) {
      this.close();
      return;
    }
    this.saving = true;
    this.saveButton.disabled = true;
    this.saveButton.textContent = "Saving…";
    this.errors.hidden = true;
    try {
      const answer = await api.patch<{ session: Session }>(
        `/api/sessions/${encodeURIComponent(this.sessionId)}/metadata`,
        body,
      );
      if (this.disposed) return;
      this.ctx.store.upsert(answer.session);
      this.close();
      this.say("Saved.", true);
    } catch (error) {
      if (this.disposed) return;
      // A name taken (409) or refused (400 on the name): the name field is the one to fix.
      const aboutName =
        error instanceof ApiError &&
        body.name !== undefined &&
        (error.status === 409 ||
          (Array.isArray(error.details) &&
            (error.details as { field?: string }[]).some((d) => d.field === "name")));
      this.showErrors("Not saved", error, aboutName ? this.nameInput : undefined);
    } finally {
      this.saving = false;
      this.saveButton.disabled = false;
      this.saveButton.textContent = "Save";
    }
  }

  private async regenerate(): Promise<void> {
    if (!this.session || this.regenerating) return;
    // Disabled, the button drops the focus: it gets it back when done (unless moved on).
    const hadFocus = document.activeElement === this.aiButton;
    this.regenerating = true;
    this.aiButton.disabled = true;
    this.aiButton.textContent = "Asking the model…";
    this.element.setAttribute("aria-busy", "true");
    this.say("Asking the model for a name, description and tags…");
    this.errors.hidden = true;
    try {
      const answer = await api.post<{ session: Session }>(
        `/api/sessions/${encodeURIComponent(this.sessionId)}/regenerate-metadata`,
      );
      if (this.disposed) return;
      this.ctx.store.upsert(answer.session);
      // An open form shows what the model wrote, to adjust before saving.
      if (!this.form.hidden) this.fill(answer.session);
      this.say("Name, description and tags rewritten by the model.", true);
    } catch (error) {
      if (this.disposed) return;
      this.say("");
      this.showErrors("Regenerating failed", error);
      // 409: AI metadata is off in the daemon (turned off since the page loaded).
      if (error instanceof ApiError && error.status === 409) this.aiButton.hidden = true;
    } finally {
      this.regenerating = false;
      this.aiButton.disabled = false;
      this.aiButton.textContent = "Regenerate with AI";
      this.element.removeAttribute("aria-busy");
      const lost = document.activeElement === null || document.activeElement === document.body;
      if (hadFocus && lost && !this.aiButton.hidden && !this.disposed) this.aiButton.focus();
    }
  }
}
