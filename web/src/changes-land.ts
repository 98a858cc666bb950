/**
 * Landing a session's work from the Changes tab: merge (a dry run first; the Merge button is
 * live only while the verdict it showed still stands), push, and the pull request.
 *
 * Anything that moves a branch says what it keeps, in the daemon's own words
 * (MergeResult.kept) before and after. A refusal lists what would have been lost and the
 * conflicting files, and can be handed to the agent; the check runs again by itself when
 * the agent's work changes the branch.
 */

import { ApiError, api } from "./api";
import { h, replace, uid } from "./dom";
import type {
  AskAgentResult,
  MergeRefusalReason,
  MergeRequest,
  MergeResult,
  MergeStrategy,
  PullRequest,
  PushResult,
  Repository,
  ServerEvent,
  Session,
} from "./types";

const STRATEGIES: [MergeStrategy, string][] = [
  ["merge", "Merge commit"],
  ["squash", "Squash into one commit"],
  ["rebase", "Rebase onto the target"],
  ["fast-forward", "Fast-forward only"],
];

/** What a refusal means for the user, in a sentence. */
function refusalText(reason: MergeRefusalReason, target: string): string {
  switch (reason) {
    case "uncommitted_changes":
      return "The session has uncommitted work that this merge would leave behind. Tick “Commit the session's uncommitted work first”, or ask the agent to commit.";
    case "conflicts":
      return `The branch conflicts with ${target}: merging now would lose one side of these files.`;
    case "target_dirty":
      return `${target} is checked out in a worktree with local changes that the merge would overwrite. Commit or stash them there first.`;
    case "target_moved":
      return `${target} moved while merging; nothing was changed. Check again.`;
    case "not_fast_forward":
      return `${target} has commits the session's branch does not: it cannot be fast-forwarded. Choose another strategy, or ask the agent to rebase.`;
    case "nothing_to_merge":
      return `Nothing to merge: ${target} already has all of the branch.`;
    case "branch_moved":
      return "The session's branch moved while merging; nothing was changed. Check again.";
  }
}

/** A MergeResult carried by a refusal's error details, if the daemon sent one. */
function resultIn(details: unknown): MergeResult | null {
  if (!details || typeof details !== "object") return null;
  const value = details as Record<string, unknown>;
  if ("refusal" in value && "kept" in value) return value as unknown as MergeResult;
  for (const key of ["result", "merge"]) {
    if (value[key] && typeof value[key] === "object") return resultIn(value[key]);
  }
  return null;
}

/** The pull requests in any of the answers GET pull-request may give. */
export function pullRequestsIn(data: unknown): PullRequest[] {
  if (!data || typeof data !== "object") return [];
  if (Array.isArray(data)) return data.flatMap(pullRequestsIn);
  const value = data as Record<string, unknown>;
  if (typeof value.number === "number" && typeof value.url === "string") {
    return [value as unknown as PullRequest];
  }
  return [
    ...pullRequestsIn(value.pull_request),
    ...(Array.isArray(value.pull_requests) ? value.pull_requests.flatMap(pullRequestsIn) : []),
  ];
}

function short(hash: string | null | undefined): string {
  return hash ? hash.slice(0, 10) : "";
}

export class LandPanel {
  readonly element: HTMLElement;
  private readonly repoSelect: HTMLSelectElement;
  private readonly repoField: HTMLElement;
  private readonly strategy: HTMLSelectElement;
  private readonly target: HTMLInputElement;
  private readonly commitFirst: HTMLInputElement;
  private readonly checkButton: HTMLButtonElement;
  private readonly mergeButton: HTMLButtonElement;
  private readonly verdict: HTMLElement;
  private readonly pushButton: HTMLButtonElement;
  private readonly pushOut: HTMLElement;
  private readonly prTitle: HTMLInputElement;
  private readonly prDraft: HTMLInputElement;
  private readonly prGenerate: HTMLInputElement;
  private readonly prButton: HTMLButtonElement;
  private readonly prOut: HTMLElement;
  /** The dry run shown, and the form it was made for: Merge is live only while both hold. */
  private checked: { key: string; result: MergeResult } | null = null;
  private busy = false;
  /** The agent was asked to resolve a refusal: check again when its work lands. */
  private recheck = false;
  private readonly prs = new Map<string, PullRequest>();
  private repoKey = "";

  constructor(
    private readonly sessionId: string,
    private readonly getSession: () => Session | undefined,
    private readonly report: (error: unknown, context: string) => void,
  ) {
    const field = (label: string, control: HTMLElement, id: string): HTMLElement =>
      h("div", { class: "field" }, h("label", { for: id }, label), control);
    const repoId = uid("merge-repo");
    this.repoSelect = h("select", { id: repoId });
    this.repoField = field("Repository", this.repoSelect, repoId);
    const strategyId = uid("merge-strategy");
    this.strategy = h(
      "select",
      { id: strategyId },
      STRATEGIES.map(([value, label]) => h("option", { value }, label)),
    );
    const targetId = uid("merge-target");
    this.target = h("input", { id: targetId, type: "text", autocomplete: "off" });
    const commitId = uid("merge-commit");
    this.commitFirst = h("input", { id: commitId, type: "checkbox" });
    this.checkButton = h("button", { type: "button", class: "button" }, "Check merge");
    this.mergeButton = h(
      "button",
      { type: "button", class: "button primary", disabled: true },
      "Merge",
    );
    this.verdict = h("div", { class: "merge-verdict", "aria-live": "polite" });
    for (const control of [this.repoSelect, this.strategy, this.target, this.commitFirst]) {
      control.addEventListener("input", () => this.formChanged());
      control.addEventListener("change", () => this.formChanged());
    }
    this.checkButton.addEventListener("click", () => void this.dryRun());
    this.mergeButton.addEventListener("click", () => void this.merge());

    this.pushButton = h("button", { type: "button", class: "button" }, "Push");
    this.pushButton.addEventListener("click", () => void this.push());
    this.pushOut = h("div", { class: "push-result", "aria-live": "polite" });
    const titleId = uid("pr-title");
    this.prTitle = h("input", {
      id: titleId,
      type: "text",
      placeholder: "Default: the session's name",
    });
    const draftId = uid("pr-draft");
    this.prDraft = h("input", { id: draftId, type: "checkbox" });
    const generateId = uid("pr-generate");
    this.prGenerate = h("input", { id: generateId, type: "checkbox" });
    this.prButton = h("button", { type: "button", class: "button" }, "Create pull request");
    this.prButton.addEventListener("click", () => void this.createPullRequest());
    this.prOut = h("div", { class: "pr-result", "aria-live": "polite" });

    this.element = h(
      "section",
      { class: "land", "aria-label": "Merge, push and pull request" },
      h(
        "div",
        { class: "land-merge" },
        h("h3", null, "Merge"),
        h(
          "div",
          { class: "field-row" },
          this.repoField,
          field("Strategy", this.strategy, strategyId),
          field("Target branch", this.target, targetId),
        ),
        h(
          "div",
          { class: "field checkbox" },
          this.commitFirst,
          h("label", { for: commitId }, "Commit the session's uncommitted work first"),
        ),
        h("div", { class: "form-buttons" }, this.checkButton, this.mergeButton),
        this.verdict,
      ),
      h(
        "div",
        { class: "land-publish" },
        h("h3", null, "Push and pull request"),
        h(
          "p",
          { class: "hint" },
          "Push sends the session's branch to its remote; never forced, so the remote keeps every commit it has.",
        ),
        h("div", { class: "form-buttons" }, this.pushButton),
        this.pushOut,
        h(
          "div",
          { class: "field-row" },
          field("Pull request title", this.prTitle, titleId),
        ),
        h(
          "div",
          { class: "inline" },
          h(
            "div",
            { class: "field checkbox" },
            this.prDraft,
            h("label", { for: draftId }, "Draft"),
          ),
          h(
            "div",
            { class: "field checkbox" },
            this.prGenerate,
            h("label", { for: generateId }, "Write title and body from the chat"),
          ),
        ),
        h("div", { class: "form-buttons" }, this.prButton),
        this.prOut,
      ),
    );
    this.sessionChanged();
    this.renderVerdict();
  }

  /** Repositories or base branch changed: the form follows. */
  sessionChanged(): void {
    const repos = this.getSession()?.repositories ?? [];
    const key = repos.map((r) => `${r.mount_name}:${r.base_branch}`).join(",");
    if (key === this.repoKey) return;
    this.repoKey = key;
    const chosen = this.repoSelect.value;
    replace(
      this.repoSelect,
      repos.map((repo) =>
        h(
          "option",
          { value: repo.mount_name, selected: repo.mount_name === chosen },
          repo.is_primary ? `${repo.mount_name} (primary)` : repo.mount_name,
        ),
      ),
    );
    this.repoField.hidden = repos.length < 2;
    this.updatePlaceholder();
  }

  /** The branch moved (session_changes): the verdict no longer stands. */
  changesArrived(): void {
    if (this.checked) {
      this.checked = null;
      this.renderVerdict("The branch changed since the check: check again before merging.");
    }
    if (this.recheck) {
      this.recheck = false;
      void this.dryRun();
    }
  }

  onEvent(event: ServerEvent): void {
    if (event.type !== "pull_request") return;
    for (const pr of pullRequestsIn(event.pull_request ?? event)) this.prs.set(pr.mount_name, pr);
    this.renderPullRequests();
  }

  /** Each repository's pull request, if it has one (404 is "none yet", not a problem). */
  async loadPullRequests(): Promise<void> {
    const repos = this.getSession()?.repositories ?? [];
    const base = `/api/sessions/${encodeURIComponent(this.sessionId)}/pull-request`;
    const paths =
      repos.length > 1
        ? repos.map((r) => `${base}?repository=${encodeURIComponent(r.mount_name)}`)
        : [base];
    await Promise.all(
      paths.map(async (path) => {
        try {
          for (const pr of pullRequestsIn(await api.get<unknown>(path))) {
            this.prs.set(pr.mount_name, pr);
          }
        } catch (error) {
          if (!(error instanceof ApiError && error.status === 404)) {
            this.report(error, "Loading the pull request");
          }
        }
      }),
    );
    this.renderPullRequests();
  }

  // --- merge ---------------------------------------------------------------------------

  private repository(): Repository | undefined {
    const repos = this.getSession()?.repositories ?? [];
    return repos.find((r) => r.mount_name === this.repoSelect.value) ?? repos[0];
  }

  private updatePlaceholder(): void {
    const repo = this.repository();
    this.target.placeholder = repo ? `${repo.base_branch} (the base branch)` : "the base branch";
  }

  private body(dryRun: boolean): MergeRequest {
    const repo = this.repository();
    return {
      strategy: this.strategy.value as MergeStrategy,
      repository: repo?.mount_name ?? null,
      target_branch: this.target.value.trim() || null,
      commit_uncommitted: this.commitFirst.checked,
      dry_run: dryRun,
    };
  }

  private formKey(): string {
    return JSON.stringify(this.body(false));
  }

  private formChanged(): void {
    this.updatePlaceholder();
    if (this.checked && this.checked.key !== this.formKey()) {
      this.checked = null;
      this.renderVerdict();
    }
  }

  private setBusy(busy: boolean): void {
    this.busy = busy;
    this.checkButton.disabled = busy;
    this.pushButton.disabled = busy;
    this.prButton.disabled = busy;
    this.mergeButton.disabled = busy || !this.mergeable();
  }

  private mergeable(): boolean {
    const checked = this.checked;
    return (
      checked !== null &&
      checked.key === this.formKey() &&
      checked.result.clean &&
      checked.result.refusal === null
    );
  }

  private async dryRun(): Promise<void> {
    if (this.busy) return;
    this.setBusy(true);
    this.checked = null;
    this.renderVerdict("Checking…");
    const key = this.formKey();
    try {
      const result = await api.post<MergeResult>(
        `/api/sessions/${encodeURIComponent(this.sessionId)}/merge`,
        this.body(true),
      );
      this.checked = { key, result };
      this.renderVerdict();
    } catch (error) {
      const result = error instanceof ApiError ? resultIn(error.details) : null;
      if (result) {
        this.checked = { key, result };
        this.renderVerdict();
      } else {
        this.renderVerdict("The check failed: see the error above.");
        this.report(error, "Checking the merge");
      }
    } finally {
      this.setBusy(false);
    }
  }

  private async merge(): Promise<void> {
    if (this.busy || !this.mergeable()) return;
    this.setBusy(true);
    try {
      const result = await api.post<MergeResult>(
        `/api/sessions/${encodeURIComponent(this.sessionId)}/merge`,
        this.body(false),
      );
      this.checked = null;
      this.renderMerged(result);
    } catch (error) {
      const result = error instanceof ApiError ? resultIn(error.details) : null;
      this.checked = null;
      if (result) this.renderRefusal(result, error instanceof ApiError ? error.message : null);
      else this.renderVerdict("The merge failed: see the error above. Nothing was changed.");
      this.report(error, "Merging");
    } finally {
      this.setBusy(false);
    }
  }

  private renderVerdict(note?: string): void {
    this.mergeButton.disabled = this.busy || !this.mergeable();
    const result = this.checked?.result;
    if (!result) {
      replace(
        this.verdict,
        h(
          "p",
          { class: "muted" },
          note ?? "Check the merge first: the verdict shows here, then Merge can be used.",
        ),
      );
      return;
    }
    if (!result.clean || result.refusal) {
      this.renderRefusal(result, null);
      return;
    }
    replace(
      this.verdict,
      h(
        "div",
        { class: "verdict verdict-clean", "data-verdict": "clean" },
        h(
          "p",
          null,
          h("strong", null, "Merges cleanly"),
          ` into ${result.target_branch} (${STRATEGIES.find(([s]) => s === result.strategy)?.[1] ?? result.strategy}).`,
        ),
        h("p", { class: "keeps" }, "✓ ", result.kept),
      ),
    );
  }

  private renderRefusal(result: MergeResult, message: string | null): void {
    const reason = result.refusal ?? "conflicts";
    const ask = h(
      "button",
      { type: "button", class: "button small" },
      "Ask the agent to resolve",
    );
    ask.addEventListener("click", () => void this.askAgent(result, ask));
    // The agent can rebase its own branch; it cannot fix the user's checkout.
    const canAsk = reason === "conflicts" || reason === "not_fast_forward";
    const uncommitted = result.uncommitted ?? [];
    replace(
      this.verdict,
      h(
        "div",
        { class: "verdict verdict-refused", role: "alert", "data-verdict": reason },
        h("p", null, h("strong", null, "Cannot merge. "), refusalText(reason, result.target_branch)),
        message ? h("p", { class: "muted" }, message) : null,
        result.conflicts.length
          ? h(
              "div",
              null,
              h("h4", null, `Conflicting files (${result.conflicts.length})`),
              h(
                "ul",
                { class: "conflict-files" },
                result.conflicts.map((path) => h("li", null, h("code", null, path))),
              ),
            )
          : null,
        uncommitted.length
          ? h(
              "div",
              null,
              h("h4", null, "Uncommitted in the session"),
              h(
                "ul",
                { class: "conflict-files uncommitted-files" },
                uncommitted.map((line) => h("li", null, h("code", null, line))),
              ),
            )
          : null,
        result.target_worktree
          ? h(
              "p",
              null,
              "Local changes in ",
              h("code", null, result.target_worktree),
              " would be overwritten.",
            )
          : null,
        h("p", { class: "keeps" }, "✓ ", result.kept),
        canAsk ? h("div", { class: "form-buttons" }, ask) : null,
      ),
    );
  }

  private renderMerged(result: MergeResult): void {
    replace(
      this.verdict,
      h(
        "div",
        { class: "verdict verdict-merged", "data-verdict": "merged" },
        h(
          "p",
          null,
          h("strong", null, "Merged"),
          ` into ${result.target_branch}: ${short(result.target_before)} → ${short(result.target_after)}.`,
        ),
        h("p", { class: "keeps" }, "✓ ", result.kept),
        result.backup_ref
          ? h(
              "p",
              { class: "hint" },
              "The target as it was is kept at ",
              h("code", null, result.backup_ref),
              ".",
            )
          : null,
        result.updated_checkout
          ? h(
              "p",
              { class: "hint" },
              "Your checkout at ",
              h("code", null, result.updated_checkout),
              " was updated to the merge.",
            )
          : null,
      ),
    );
  }

  private async askAgent(result: MergeResult, button: HTMLButtonElement): Promise<void> {
    button.disabled = true;
    try {
      await api.post<AskAgentResult>(
        `/api/sessions/${encodeURIComponent(this.sessionId)}/merge/ask-agent`,
        {
          strategy: result.strategy,
          repository: result.mount_name,
          target_branch: result.target_branch,
        },
      );
      this.recheck = true;
      this.verdict.append(
        h(
          "p",
          { class: "asked", role: "status" },
          `Asked the agent to rebase onto ${result.target_branch} and resolve; the check runs again when its work changes the branch.`,
        ),
      );
    } catch (error) {
      button.disabled = false;
      this.report(error, "Asking the agent to resolve");
    }
  }

  // --- push and pull request -----------------------------------------------------------

  private async push(): Promise<void> {
    if (this.busy) return;
    this.setBusy(true);
    replace(this.pushOut, h("p", { class: "muted" }, "Pushing…"));
    try {
      const result = await api.post<PushResult>(
        `/api/sessions/${encodeURIComponent(this.sessionId)}/push`,
        { repository: this.repository()?.mount_name ?? null },
      );
      replace(
        this.pushOut,
        h(
          "p",
          { class: "keeps" },
          "✓ Pushed ",
          h("code", null, result.branch),
          ` to ${result.remote} at ${short(result.commit)}.`,
        ),
        result.output.trim() ? h("pre", { class: "push-output" }, result.output.trim()) : null,
      );
    } catch (error) {
      replace(this.pushOut, h("p", { class: "muted" }, "Not pushed: see the error above."));
      this.report(error, "Pushing");
    } finally {
      this.setBusy(false);
    }
  }

  private async createPullRequest(): Promise<void> {
    if (this.busy) return;
    this.setBusy(true);
    try {
      const data = await api.post<unknown>(
        `/api/sessions/${encodeURIComponent(this.sessionId)}/pull-request`,
        {
          repository: this.repository()?.mount_name ?? null,
          title: this.prTitle.value.trim() || null,
          draft: this.prDraft.checked,
          generate: this.prGenerate.checked,
        },
      );
      for (const pr of pullRequestsIn(data)) this.prs.set(pr.mount_name, pr);
      this.renderPullRequests();
    } catch (error) {
      this.report(error, "Creating the pull request");
    } finally {
      this.setBusy(false);
    }
  }

  private renderPullRequests(): void {
    const several = (this.getSession()?.repositories.length ?? 0) > 1;
    replace(
      this.prOut,
      [...this.prs.values()].map((pr) => {
        const checks = pr.checks;
        return h(
          "div",
          { class: "pr", "data-state": pr.state },
          h(
            "p",
            null,
            h("a", { href: pr.url, target: "_blank", rel: "noopener noreferrer" }, `#${pr.number}`),
            " ",
            pr.title,
            several ? h("span", { class: "muted" }, ` (${pr.mount_name})`) : null,
          ),
          h(
            "p",
            { class: "pr-facts" },
            h("span", { class: `badge pr-state state-${pr.state}` }, pr.draft ? `${pr.state}, draft` : pr.state),
            ` ${pr.head} → ${pr.base}`,
            checks && checks.state !== "none"
              ? h(
                  "span",
                  { class: `pr-checks checks-${checks.state}` },
                  ` · checks: ${checks.passed} of ${checks.total} passed`,
                  checks.failed ? `, ${checks.failed} failed` : "",
                  checks.pending ? `, ${checks.pending} pending` : "",
                )
              : h("span", { class: "muted" }, " · no checks"),
          ),
        );
      }),
    );
  }
}
