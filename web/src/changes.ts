/**
 * The session's Changes tab: the files it changed with their counts (grouped per repository
 * when it has several), a file's diff, the branch's commits, and landing (merge, push, pull
 * request; changes-land.ts).
 *
 * Loaded the first time the tab shows, then kept current by ``session_changes`` events: a
 * burst of them is folded into one re-fetch, and while the tab is hidden only a flag is set,
 * so no request is made for a view nobody sees. Every failure stays in the tab's own error
 * list until dismissed, so none is lost behind a notice that went away.
 */

import { ApiError, errorMessage } from "./api";
import { DiffViewer } from "./changes-diff";
import { LandPanel } from "./changes-land";
import { api } from "./api";
import { h, relativeTime, replace } from "./dom";
import type {
  DiffInclude,
  FileChange,
  RepoDiff,
  ServerEvent,
  Session,
  SessionCommits,
  SessionDiff,
} from "./types";

const STATUS_MARK: Record<FileChange["status"], string> = {
  added: "A",
  modified: "M",
  deleted: "D",
  renamed: "R",
  copied: "C",
  type_changed: "T",
};
/** Errors kept in the tab at once; older ones make way. */
const MAX_ERRORS = 5;
/** Wait this long after a session_changes event for the rest of its burst. */
const CHANGES_DEBOUNCE_MS = 250;

function counts(additions: number, deletions: number): HTMLElement {
  return h(
    "span",
    { class: "counts" },
    h("span", { class: "adds" }, `+${additions.toLocaleString("en-US")}`),
    " ",
    h("span", { class: "dels" }, `−${deletions.toLocaleString("en-US")}`),
  );
}

export class ChangesPanel {
  readonly element: HTMLElement;
  private readonly summary: HTMLElement;
  private readonly includeSelect: HTMLSelectElement;
  private readonly errors: HTMLElement;
  private readonly files: HTMLElement;
  private readonly commits: HTMLElement;
  private readonly viewer: DiffViewer;
  private readonly land: LandPanel;
  private diff: SessionDiff | null = null;
  private visible = false;
  private stale = true;
  private loaded = false;
  private generation = 0;
  private debounce: number | undefined;
  private disposed = false;

  constructor(
    private readonly sessionId: string,
    private readonly getSession: () => Session | undefined,
  ) {
    const report = (error: unknown, context: string): void => this.showError(error, context);
    this.viewer = new DiffViewer(sessionId, report);
    this.land = new LandPanel(sessionId, getSession, report);
    this.summary = h("p", { class: "changes-summary", "aria-live": "polite" }, "Loading…");
    this.includeSelect = h(
      "select",
      { class: "changes-include", "aria-label": "Which changes" },
      h("option", { value: "all" }, "Committed and uncommitted"),
      h("option", { value: "committed" }, "Committed only"),
      h("option", { value: "uncommitted" }, "Uncommitted only"),
    );
    this.includeSelect.addEventListener("change", () => void this.reload());
    const refresh = h("button", { type: "button", class: "button plain small" }, "Refresh");
    refresh.addEventListener("click", () => void this.reload());
    this.errors = h("div", { class: "changes-errors" });
    this.files = h("div", { class: "changes-files", role: "region", "aria-label": "Changed files" });
    this.commits = h("div", { class: "changes-commits", role: "region", "aria-label": "Commits" });
    this.element = h(
      "div",
      { class: "changes" },
      h("div", { class: "changes-bar" }, this.summary, this.includeSelect, refresh),
      this.errors,
      h(
        "div",
        { class: "changes-grid" },
        h(
          "div",
          { class: "changes-side" },
          h("h3", null, "Files"),
          this.files,
          h("h3", null, "Commits"),
          this.commits,
        ),
        h("div", { class: "changes-main" }, this.viewer.element),
      ),
      this.land.element,
    );
  }

  /** The tab is shown: load what is missing or out of date. */
  show(): void {
    this.visible = true;
    if (!this.loaded) void this.land.loadPullRequests();
    if (this.stale) void this.reload();
  }

  hide(): void {
    this.visible = false;
  }

  sessionChanged(): void {
    this.land.sessionChanged();
  }

  onEvent(event: ServerEvent): void {
    if (event.session_id !== this.sessionId) return;
    if (event.type === "pull_request") {
      this.land.onEvent(event);
    } else if (event.type === "session_changes") {
      this.land.changesArrived();
      this.stale = true;
      if (!this.visible) return;
      window.clearTimeout(this.debounce);
      this.debounce = window.setTimeout(() => void this.reload(), CHANGES_DEBOUNCE_MS);
    }
  }

  dispose(): void {
    this.disposed = true;
    window.clearTimeout(this.debounce);
    this.viewer.dispose();
  }

  private get include(): DiffInclude {
    return this.includeSelect.value as DiffInclude;
  }

  /** Fetch the file list and the commits again (a newer reload wins over an older one). */
  async reload(): Promise<void> {
    const generation = ++this.generation;
    this.stale = false;
    this.loaded = true;
    const base = `/api/sessions/${encodeURIComponent(this.sessionId)}`;
    const [diff, commits] = await Promise.allSettled([
      api.get<SessionDiff>(`${base}/diff?include=${this.include}`),
      api.get<SessionCommits>(`${base}/commits`),
    ]);
    if (this.disposed || generation !== this.generation) return;
    if (diff.status === "fulfilled") {
      this.diff = diff.value;
      this.renderFiles();
      this.reopenSelected();
    } else {
      this.summary.textContent = "The changes could not be loaded.";
      this.showError(diff.reason, "Loading the changes");
    }
    if (commits.status === "fulfilled") this.renderCommits(commits.value);
    else this.showError(commits.reason, "Loading the commits");
  }

  /** Load the next page of one repository's files. */
  private async more(repo: RepoDiff, button: HTMLButtonElement): Promise<void> {
    if (repo.next_offset === null) return;
    button.disabled = true;
    const query = new URLSearchParams({
      include: this.include,
      repository: repo.mount_name,
      offset: String(repo.next_offset),
    });
    try {
      const page = await api.get<SessionDiff>(
        `/api/sessions/${encodeURIComponent(this.sessionId)}/diff?${query.toString()}`,
      );
      const next = page.repositories.find((r) => r.mount_name === repo.mount_name);
      if (next) {
        repo.files.push(...next.files);
        repo.next_offset = next.next_offset;
      } else {
        repo.next_offset = null;
      }
      this.renderFiles();
    } catch (error) {
      button.disabled = false;
      this.showError(error, "Loading more files");
    }
  }

  private renderFiles(): void {
    const diff = this.diff;
    if (!diff) return;
    const total = diff.totals;
    const several = diff.repositories.length > 1;
    if (total.files === 0) {
      replace(this.summary, "No changes yet");
      replace(
        this.files,
        h(
          "p",
          { class: "changes-empty" },
          h("strong", null, "No changes yet"),
          h(
            "span",
            { class: "muted" },
            " — the files the agent changes show here as it works.",
          ),
        ),
      );
      this.viewer.empty("Nothing to show yet.");
      return;
    }
    replace(
      this.summary,
      `${total.files.toLocaleString("en-US")} ${total.files === 1 ? "file" : "files"} changed `,
      counts(total.additions, total.deletions),
      diff.repositories.some((r) => r.includes_uncommitted) ? " (uncommitted included)" : "",
    );
    replace(
      this.files,
      diff.repositories.map((repo) => {
        const list = h(
          "ul",
          { class: "file-list", "aria-label": `Files in ${repo.mount_name}` },
          repo.files.map((file) => this.fileItem(repo, file, several)),
        );
        let more: HTMLElement | null = null;
        if (repo.next_offset !== null) {
          const button = h(
            "button",
            { type: "button", class: "button plain small" },
            `More files (${repo.files.length} of ${repo.totals.files} shown)`,
          );
          button.addEventListener("click", () => void this.more(repo, button));
          more = button;
        }
        return h(
          "section",
          { class: "repo-files", "data-mount": repo.mount_name },
          several
            ? h(
                "h4",
                null,
                repo.mount_name,
                " ",
                h("span", { class: "muted" }, `${repo.branch} → ${repo.base_branch}`),
                " ",
                counts(repo.totals.additions, repo.totals.deletions),
              )
            : null,
          repo.files.length ? list : h("p", { class: "muted" }, "No changes yet"),
          more,
        );
      }),
    );
    this.markSelected();
  }

  private fileItem(repo: RepoDiff, file: FileChange, several: boolean): HTMLElement {
    const button = h(
      "button",
      {
        type: "button",
        class: "file-link",
        "data-path": file.path,
        "data-mount": repo.mount_name,
        title: file.old_path ? `${file.old_path} → ${file.path}` : file.path,
      },
      h(
        "span",
        { class: `file-status status-${file.status}`, title: file.status.replace("_", " ") },
        STATUS_MARK[file.status],
      ),
      h(
        "span",
        { class: "file-path" },
        file.old_path ? h("span", { class: "muted" }, `${file.old_path} → `) : null,
        file.path,
      ),
      file.binary
        ? h("span", { class: "file-tag" }, "binary")
        : counts(file.additions, file.deletions),
      file.summarised ? h("span", { class: "file-tag" }, "large") : null,
      file.new_mode && file.old_mode
        ? h("span", { class: "file-tag" }, `${file.old_mode} → ${file.new_mode}`)
        : null,
    );
    button.addEventListener("click", () => {
      void this.viewer.open({ mount: repo.mount_name, showMount: several, file, include: this.include });
      this.markSelected();
    });
    return h("li", null, button);
  }

  private markSelected(): void {
    const current = this.viewer.current;
    for (const button of this.files.querySelectorAll<HTMLElement>(".file-link")) {
      const selected =
        current !== null &&
        button.dataset.path === current.file.path &&
        button.dataset.mount === current.mount;
      if (selected) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
  }

  /** After a reload, the open file is drawn again from its new state (or closed if gone). */
  private reopenSelected(): void {
    const current = this.viewer.current;
    if (!current || !this.diff) return;
    const repo = this.diff.repositories.find((r) => r.mount_name === current.mount);
    const file = repo?.files.find((f) => f.path === current.file.path);
    if (repo && file) {
      void this.viewer.open({ ...current, file, include: this.include });
    } else {
      this.viewer.empty(`${current.file.path} has no changes any more.`);
    }
    this.markSelected();
  }

  private renderCommits(data: SessionCommits): void {
    const several = data.repositories.length > 1;
    const all = data.repositories.flatMap((repo) => repo.commits);
    if (!all.length) {
      replace(this.commits, h("p", { class: "muted" }, "No commits on the branch yet."));
      return;
    }
    replace(
      this.commits,
      data.repositories.map((repo) =>
        h(
          "section",
          { class: "repo-commits", "data-mount": repo.mount_name },
          several ? h("h4", null, repo.mount_name) : null,
          h(
            "ol",
            { class: "commit-list" },
            repo.commits.map((commit) =>
              h(
                "li",
                { class: "commit", "data-hash": commit.hash },
                h(
                  "details",
                  null,
                  h(
                    "summary",
                    null,
                    h("code", { class: "commit-hash" }, commit.hash.slice(0, 8)),
                    " ",
                    h("span", { class: "commit-subject" }, commit.subject),
                  ),
                  h(
                    "p",
                    { class: "commit-meta muted" },
                    commit.author_name,
                    " · ",
                    h("time", { datetime: commit.date, title: commit.date }, relativeTime(commit.date)),
                    ` · ${commit.files.length} ${commit.files.length === 1 ? "file" : "files"}`,
                  ),
                  commit.body ? h("pre", { class: "commit-body" }, commit.body) : null,
                ),
              ),
            ),
          ),
          repo.truncated ? h("p", { class: "hint" }, "Older commits are not shown.") : null,
        ),
      ),
    );
  }

  private showError(error: unknown, context: string): void {
    if (this.disposed) return;
    const code = error instanceof ApiError ? error.code : null;
    const close = h("button", { type: "button", class: "icon-button", "aria-label": "Dismiss" }, "×");
    const item = h(
      "div",
      { class: "changes-error", role: "alert" },
      h(
        "p",
        null,
        code ? h("code", { class: "notice-code" }, code) : null,
        `${context}: ${errorMessage(error)}`,
      ),
      close,
    );
    close.addEventListener("click", () => item.remove());
    this.errors.append(item);
    while (this.errors.children.length > MAX_ERRORS) this.errors.firstElementChild?.remove();
  }
}
