/**
 * The "new session" form: one to five repositories picked with the daemon's directory
 * browser, the prompt, agent, model, plan mode, image and images to attach.
 *
 * The API takes ``image_paths`` as files already on the host, and uploads go into an
 * existing session's working directory, so attached images are uploaded once the new
 * session runs and then given to the agent in a message (see ``deliverAttachments``).
 */

import { api, errorMessage } from "./api";
import { h, replace, uid } from "./dom";
import type { SessionStore } from "./store";
import type { BrowseResponse, Session, UploadedFile } from "./types";
import { problemList, showError, showInfo } from "./ui";

const MAX_REPOSITORIES = 5;
const BROWSE_KEY = "corral.lastBrowse";

interface RepoRow {
  element: HTMLElement;
  path: HTMLInputElement;
  mount: HTMLInputElement;
  base: HTMLInputElement;
  mountEdited: boolean;
}

function mountNameFor(path: string): string {
  const base = path.replace(/\/+$/, "").split("/").pop() ?? "";
  const slug = base
    .toLowerCase()
    .replace(/[^a-z0-9_-]+/g, "-")
    .replace(/^-+|-+$/g, "");
  return slug.slice(0, 64) || "repo";
}

export interface CreateContext {
  store: SessionStore;
  navigate: (hash: string) => void;
  defaultImage: () => Promise<string | null>;
}

export function createView(ctx: CreateContext): HTMLElement {
  const rows: RepoRow[] = [];
  const repoList = h("div", { class: "repo-rows" });
  const errors = h("div", { class: "form-errors", role: "alert", hidden: true, tabindex: "-1" });
  const addRepo = h("button", { type: "button", class: "button plain" }, "Add another repository");

  const promptId = uid("prompt");
  const prompt = h("textarea", {
    id: promptId,
    name: "prompt",
    rows: 5,
    required: true,
    placeholder: "What should the agent do?",
  });
  const nameId = uid("name");
  const name = h("input", {
    id: nameId,
    name: "name",
    type: "text",
    pattern: "[a-z0-9][a-z0-9_-]{0,62}",
    placeholder: "generated if empty",
    autocomplete: "off",
    "aria-describedby": `${nameId}-hint`,
  });
  const agentId = uid("agent");
  const agent = h(
    "select",
    { id: agentId, name: "agent" },
    h("option", { value: "claude" }, "Claude Code"),
    h("option", { value: "codex" }, "Codex"),
  );
  const modelId = uid("model");
  const model = h("input", {
    id: modelId,
    name: "model",
    type: "text",
    placeholder: "the agent's default",
    autocomplete: "off",
  });
  const planId = uid("plan");
  const plan = h("input", { id: planId, name: "plan_mode", type: "checkbox", checked: true });
  const imageId = uid("image");
  const image = h("input", {
    id: imageId,
    name: "image",
    type: "text",
    placeholder: "the configured default",
    autocomplete: "off",
  });
  const egressId = uid("egress");
  const egress = h(
    "select",
    { id: egressId, name: "egress", "aria-describedby": `${egressId}-hint` },
    h("option", { value: "" }, "the configured default"),
    h("option", { value: "allowlist" }, "Model and allowed hosts (package registries)"),
    h("option", { value: "none" }, "Model only"),
    h("option", { value: "open" }, "Open: anywhere"),
  );
  const budgetId = uid("budget");
  const budget = h("input", {
    id: budgetId,
    name: "max_cost_usd",
    type: "number",
    min: "0.01",
    step: "0.01",
    inputmode: "decimal",
    placeholder: "no budget",
    "aria-describedby": `${budgetId}-hint`,
  });
  const filesId = uid("files");
  const files = h("input", {
    id: filesId,
    name: "files",
    type: "file",
    accept: "image/*",
    multiple: true,
    "aria-describedby": `${filesId}-hint`,
  });
  const submit = h("button", { type: "submit", class: "button primary" }, "Create session");

  void ctx.defaultImage().then((tag) => {
    if (tag) image.placeholder = `default: ${tag}`;
  });

  function renumber(): void {
    rows.forEach((row, index) => {
      const legend = row.element.querySelector("legend");
      if (legend) {
        legend.textContent =
          index === 0
            ? `Repository 1 (primary, mounted at /workspace)`
            : `Repository ${index + 1} (mounted at /repos/${row.mount.value || "…"})`;
      }
      const remove = row.element.querySelector<HTMLButtonElement>(".remove-repo");
      if (remove) remove.hidden = rows.length === 1;
      row.mount.closest<HTMLElement>(".field")?.toggleAttribute("hidden", rows.length === 1);
    });
    addRepo.disabled = rows.length >= MAX_REPOSITORIES;
    addRepo.textContent =
      rows.length >= MAX_REPOSITORIES
        ? `At most ${MAX_REPOSITORIES} repositories`
        : "Add another repository";
  }

  function addRow(): RepoRow {
    const pathId = uid("repo-path");
    const mountId = uid("mount");
    const baseId = uid("base");
    const path = h("input", {
      id: pathId,
      type: "text",
      required: true,
      placeholder: "/home/you/src/project",
      autocomplete: "off",
      spellcheck: "false",
      class: "repo-path",
    });
    const mount = h("input", {
      id: mountId,
      type: "text",
      pattern: "[a-z0-9_-]{1,64}",
      autocomplete: "off",
      class: "mount-name",
    });
    const base = h("input", {
      id: baseId,
      type: "text",
      placeholder: "current branch",
      autocomplete: "off",
      class: "base-branch",
    });
    const browse = h("button", { type: "button", class: "button plain browse" }, "Browse…");
    const remove = h("button", { type: "button", class: "button plain remove-repo" }, "Remove");
    const element = h(
      "fieldset",
      { class: "repo-row" },
      h("legend", null, "Repository"),
      h(
        "div",
        { class: "field" },
        h("label", { for: pathId }, "Folder (a git repository or a folder inside one)"),
        h("div", { class: "inline" }, path, browse),
      ),
      h(
        "div",
        { class: "field-row" },
        h("div", { class: "field" }, h("label", { for: mountId }, "Mount name"), mount),
        h("div", { class: "field" }, h("label", { for: baseId }, "Base branch"), base),
      ),
      remove,
    );
    const row: RepoRow = { element, path, mount, base, mountEdited: false };
    path.addEventListener("input", () => {
      if (!row.mountEdited) mount.value = mountNameFor(path.value);
      renumber();
    });
    mount.addEventListener("input", () => {
      row.mountEdited = true;
      renumber();
    });
    browse.addEventListener("click", async () => {
      const chosen = await browseDialog(path.value);
      if (chosen) {
        path.value = chosen;
        path.dispatchEvent(new Event("input"));
        path.focus();
      }
    });
    remove.addEventListener("click", () => {
      rows.splice(rows.indexOf(row), 1);
      element.remove();
      renumber();
      rows[0]?.path.focus();
    });
    rows.push(row);
    repoList.append(element);
    renumber();
    return row;
  }

  addRepo.addEventListener("click", () => addRow().path.focus());
  addRow();

  function body(): Record<string, unknown> {
    const out: Record<string, unknown> = { prompt: prompt.value, agent: agent.value };
    if (rows.length === 1) {
      const row = rows[0] as RepoRow;
      out.repo_path = row.path.value.trim();
      if (row.base.value.trim()) out.base_branch = row.base.value.trim();
    } else {
      out.repositories = rows.map((row) => {
        const repo: Record<string, string> = {
          path: row.path.value.trim(),
          mount_name: row.mount.value.trim() || mountNameFor(row.path.value),
        };
        if (row.base.value.trim()) repo.base_branch = row.base.value.trim();
        return repo;
      });
    }
    if (name.value.trim()) out.name = name.value.trim();
    if (model.value.trim()) out.model = model.value.trim();
    if (image.value.trim()) out.image = image.value.trim();
    out.no_plan_mode = !plan.checked;
    if (egress.value) out.egress = egress.value;
    if (budget.value.trim()) out.max_cost_usd = Number(budget.value);
    return out;
  }

  function showErrors(error: unknown): void {
    replace(
      errors,
      h("p", null, h("strong", null, "The session was not created: "), errorMessage(error)),
      problemList(error),
    );
    errors.hidden = false;
    errors.focus();
  }

  const form = h(
    "form",
    { class: "create-form", "aria-labelledby": "create-title", novalidate: true },
    h("h2", { id: "create-title" }, "New session"),
    errors,
    h("section", { class: "form-section", "aria-label": "Repositories" }, repoList, addRepo),
    h("div", { class: "field" }, h("label", { for: promptId }, "Prompt"), prompt),
    h(
      "div",
      { class: "field-row" },
      h("div", { class: "field" }, h("label", { for: agentId }, "Agent"), agent),
      h("div", { class: "field" }, h("label", { for: modelId }, "Model"), model),
    ),
    h(
      "div",
      { class: "field checkbox" },
      plan,
      h(
        "label",
        { for: planId },
        "Start in plan mode (the agent proposes a plan before it changes files)",
      ),
    ),
    h(
      "div",
      { class: "field-row" },
      h("div", { class: "field" }, h("label", { for: imageId }, "Container image"), image),
      h(
        "div",
        { class: "field" },
        h("label", { for: nameId }, "Session name"),
        name,
        h("small", { id: `${nameId}-hint`, class: "hint" }, "Lower case letters, digits, - and _"),
      ),
    ),
    h(
      "div",
      { class: "field-row" },
      h(
        "div",
        { class: "field" },
        h("label", { for: egressId }, "Network"),
        egress,
        h(
          "small",
          { id: `${egressId}-hint`, class: "hint" },
          "What the container may reach besides its model (through corral; it never holds your key).",
        ),
      ),
      h(
        "div",
        { class: "field" },
        h("label", { for: budgetId }, "Budget (US $)"),
        budget,
        h(
          "small",
          { id: `${budgetId}-hint`, class: "hint" },
          "The agent stops when its estimated spend reaches it; raise it to go on.",
        ),
      ),
    ),
    h(
      "div",
      { class: "field" },
      h("label", { for: filesId }, "Attach images"),
      files,
      h(
        "small",
        { id: `${filesId}-hint`, class: "hint" },
        "Uploaded into the session's working directory once it runs, then named to the agent in a message.",
      ),
    ),
    h(
      "div",
      { class: "form-buttons" },
      submit,
      h("a", { href: "#/", class: "button plain" }, "Cancel"),
      h("small", { class: "hint" }, "Ctrl+Enter creates"),
    ),
  );

  // A reason shown for the last attempt stops being true once the form changes.
  form.addEventListener("input", () => {
    errors.hidden = true;
  });
  form.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errors.hidden = true;
    const missing = rows.find((row) => !row.path.value.trim());
    if (missing) {
      showErrors(new Error("choose a repository folder"));
      missing.path.focus();
      return;
    }
    if (!prompt.value.trim()) {
      showErrors(new Error("the prompt must not be empty"));
      prompt.focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = "Creating…";
    form.setAttribute("aria-busy", "true");
    try {
      const answer = await api.post<{ session: Session }>("/api/sessions", body());
      ctx.store.upsert(answer.session);
      const chosen = [...(files.files ?? [])];
      if (chosen.length) void deliverAttachments(ctx.store, answer.session.id, chosen);
      ctx.navigate(`#/s/${answer.session.id}`);
    } catch (error) {
      showErrors(error);
    } finally {
      submit.disabled = false;
      submit.textContent = "Create session";
      form.removeAttribute("aria-busy");
    }
  });

  queueMicrotask(() => rows[0]?.path.focus());
  return h("div", { class: "view create-view" }, form);
}

/** Upload files into a session's working directory; answers the host paths written. */
export async function uploadFiles(sessionId: string, chosen: File[]): Promise<UploadedFile[]> {
  const data = new FormData();
  for (const file of chosen) data.append("file", file, file.name);
  const answer = await api.post<{ files: UploadedFile[] }>(
    `/api/sessions/${encodeURIComponent(sessionId)}/upload`,
    data,
  );
  return answer.files;
}

/**
 * Once the new session runs, upload the images and tell the agent where they are (by name:
 * the files are in its working directory, whose path differs inside the container).
 */
export async function deliverAttachments(store: SessionStore, sessionId: string, chosen: File[]) {
  const session = await new Promise<Session | null>((resolve) => {
    const check = () => {
      const s = store.get(sessionId);
      if (!s || s.status === "failed" || s.status === "deleting") return (resolve(s ?? null), true);
      if (s.status === "running") return (resolve(s), true);
      return false;
    };
    if (check()) return;
    const stop = store.subscribe((changed) => {
      if ((changed === null || changed === sessionId) && check()) stop();
    });
  });
  if (!session || session.status !== "running") {
    showError(
      new Error(`the session did not start, so ${chosen.length} image(s) were not attached`),
    );
    return;
  }
  try {
    const uploaded = await uploadFiles(sessionId, chosen);
    const names = uploaded.map((file) => file.name).join(", ");
    await api.post(`/api/sessions/${encodeURIComponent(sessionId)}/message`, {
      content: `I attached these images in your working directory: ${names}`,
    });
    showInfo(`Attached ${uploaded.length} image(s) to ${session.name}`);
  } catch (error) {
    showError(error, "Attaching images");
  }
}

/** The directory browser: resolves with the chosen folder, or null. */
export function browseDialog(start: string): Promise<string | null> {
  const titleId = uid("browse-title");
  const pathId = uid("browse-path");
  const hiddenId = uid("browse-hidden");
  const pathInput = h("input", {
    id: pathId,
    type: "text",
    autocomplete: "off",
    spellcheck: "false",
  });
  const go = h("button", { type: "submit", class: "button plain" }, "Go");
  const up = h(
    "button",
    { type: "button", class: "button plain", "aria-label": "Parent folder" },
    "↑ Up",
  );
  const hidden = h("input", { id: hiddenId, type: "checkbox" });
  const status = h("p", { class: "browse-status", role: "status" });
  const errorBox = h("p", { class: "form-errors", role: "alert", hidden: true });
  const list = h("ul", { class: "browse-list", "aria-label": "Folders" });
  const choose = h("button", { type: "button", class: "button primary" }, "Choose this folder");
  const cancel = h("button", { type: "button", class: "button plain" }, "Cancel");
  const bar = h(
    "form",
    { class: "browse-bar" },
    h("label", { for: pathId, class: "visually-hidden" }, "Folder"),
    pathInput,
    go,
    up,
  );
  const element = h(
    "dialog",
    { class: "dialog browse-dialog", "aria-labelledby": titleId },
    h("h2", { id: titleId }, "Choose a repository"),
    bar,
    h(
      "div",
      { class: "field checkbox" },
      hidden,
      h("label", { for: hiddenId }, "Show hidden folders"),
    ),
    errorBox,
    status,
    list,
    h("div", { class: "dialog-buttons" }, cancel, choose),
  );
  let current: BrowseResponse | null = null;
  let result: string | null = null;

  async function load(path: string): Promise<void> {
    errorBox.hidden = true;
    status.textContent = "Loading…";
    try {
      current = await api.post<BrowseResponse>("/api/browse-directory", {
        path,
        show_hidden: hidden.checked,
      });
    } catch (error) {
      status.textContent = "";
      errorBox.textContent = errorMessage(error);
      errorBox.hidden = false;
      return;
    }
    localStorage.setItem(BROWSE_KEY, current.path);
    pathInput.value = current.path;
    up.disabled = current.parent === null;
    const dirs = current.entries.filter((entry) => entry.is_dir);
    const here = current;
    status.textContent = `${dirs.length} folder${dirs.length === 1 ? "" : "s"} in ${here.path}`;
    replace(
      list,
      dirs.length === 0 ? h("li", { class: "muted" }, "No folders here") : null,
      dirs.map((entry) => {
        const open = h(
          "button",
          { type: "button", class: "browse-entry", "data-path": entry.path },
          h("span", { class: "folder-icon", "aria-hidden": "true" }, entry.is_git_repo ? "⎇" : "▸"),
          entry.name,
          entry.is_git_repo ? h("span", { class: "badge tone-info" }, "git") : null,
        );
        open.addEventListener("click", () => void load(entry.path));
        const pick = entry.is_git_repo
          ? h(
              "button",
              { type: "button", class: "button plain small", "aria-label": `Choose ${entry.name}` },
              "Choose",
            )
          : null;
        pick?.addEventListener("click", () => {
          result = entry.path;
          element.close();
        });
        return h("li", null, open, pick);
      }),
    );
  }

  bar.addEventListener("submit", (event) => {
    event.preventDefault();
    void load(pathInput.value.trim() || "~");
  });
  up.addEventListener("click", () => {
    if (current?.parent) void load(current.parent);
  });
  hidden.addEventListener("change", () => {
    if (current) void load(current.path);
  });
  choose.addEventListener("click", () => {
    result = current?.path ?? null;
    element.close();
  });
  cancel.addEventListener("click", () => element.close());

  return new Promise((resolve) => {
    element.addEventListener("close", () => {
      element.remove();
      resolve(result);
    });
    document.body.append(element);
    element.showModal();
    const first = start.trim().startsWith("/")
      ? start.trim()
      : (localStorage.getItem(BROWSE_KEY) ?? "~");
    void load(first).then(() => {
      if (!current && first !== "~") void load("~");
    });
  });
}
