/**
 * What a session spent and its budget: a panel in the session view, and the cost shown in
 * the list.
 *
 * The panel loads GET /api/sessions/{id}/usage once, then follows the session's ``usage``
 * events (totals after each model request) and its record (budget fields and the agent's
 * state, which says ``error`` with ``budget_exhausted`` when a budget stopped it). The form
 * sets or raises the budget with PATCH /api/sessions/{id}/budget; raised past what was
 * spent, the daemon clears the error and the agent goes on at its next request.
 */

import { api, errorMessage } from "./api";
import { formatNumber, h, replace, uid } from "./dom";
import type { Session, SessionUsage, UsageTotals } from "./types";

/** US dollars: cents from a dollar up, four decimals below (small budgets). */
export function usd(amount: number): string {
  if (amount >= 1 || amount === 0) return `$${amount.toFixed(2)}`;
  return `$${amount.toFixed(4).replace(/0+$/, "")}`;
}

/** 12345 → "12.3k": the list's short form. */
export function shortCount(n: number): string {
  if (n < 1000) return String(n);
  if (n < 1_000_000) return `${(n / 1000).toFixed(n < 10_000 ? 1 : 0)}k`;
  return `${(n / 1_000_000).toFixed(1)}M`;
}

export function isBudgetExhausted(session: Session): boolean {
  return session.agent_state === "error" && session.agent_state_reason === "budget_exhausted";
}

/** The list entry's spend, or null before the first request. */
export function listCost(session: Session): HTMLElement | null {
  const tokens = session.total_tokens ?? 0;
  const cost = session.cost_usd ?? 0;
  if (!tokens && !cost) return null;
  return h(
    "span",
    {
      class: "session-cost",
      "data-cost": String(cost),
      title: `${formatNumber(tokens)} tokens, estimated ${usd(cost)}`,
    },
    `${usd(cost)} · ${shortCount(tokens)} tok`,
  );
}

export class UsagePanel {
  readonly element: HTMLElement;
  private readonly summary: HTMLElement;
  private readonly alert: HTMLElement;
  private readonly table: HTMLElement;
  private readonly form: HTMLFormElement;
  private readonly costInput: HTMLInputElement;
  private readonly tokensInput: HTMLInputElement;
  private readonly note: HTMLElement;
  private readonly details: HTMLDetailsElement;
  private usage: SessionUsage | null = null;
  private totals: UsageTotals | null = null;
  private session: Session | null = null;
  private saving = false;
  private formDirty = false;
  private wasExhausted = false;
  private reloadTimer: number | undefined;

  constructor(private readonly sessionId: string) {
    this.summary = h("span", { class: "usage-summary" });
    this.alert = h("div", { class: "usage-alert", role: "alert" });
    this.table = h("div", { class: "usage-table" });
    const costId = uid("budget-cost");
    const tokensId = uid("budget-tokens");
    this.costInput = h("input", {
      id: costId,
      type: "number",
      min: "0.01",
      step: "0.01",
      inputmode: "decimal",
      placeholder: "no limit",
      name: "max_cost_usd",
    });
    this.tokensInput = h("input", {
      id: tokensId,
      type: "number",
      min: "1",
      step: "1",
      inputmode: "numeric",
      placeholder: "no limit",
      name: "max_tokens",
    });
    this.note = h("p", { class: "usage-note", role: "status" });
    this.form = h(
      "form",
      { class: "budget-form", "aria-label": "Session budget" },
      h("label", { for: costId }, "Budget, USD ", this.costInput),
      h("label", { for: tokensId }, "Budget, tokens ", this.tokensInput),
      h("button", { type: "submit", class: "button primary small" }, "Save budget"),
      this.note,
    );
    for (const input of [this.costInput, this.tokensInput])
      input.addEventListener("input", () => (this.formDirty = true));
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.save();
    });
    this.details = h(
      "details",
      { class: "usage-details" },
      h("summary", null, "Usage and budget: ", this.summary),
      this.table,
      this.form,
    );
    this.element = h(
      "section",
      { class: "usage-panel", "aria-label": "Usage and budget" },
      this.alert,
      this.details,
    );
    void this.load();
  }

  /** The session's record changed (budget fields, agent state). */
  setSession(session: Session): void {
    this.session = session;
    const exhausted = isBudgetExhausted(session);
    // The refusal's words (which budget, how much) come with the usage answer.
    if (exhausted && !this.wasExhausted) void this.load();
    this.wasExhausted = exhausted;
    if (!this.formDirty) {
      this.costInput.value = session.max_cost_usd != null ? String(session.max_cost_usd) : "";
      this.tokensInput.value = session.max_tokens != null ? String(session.max_tokens) : "";
    }
    this.render();
  }

  /** A ``usage`` event: the session's totals after a request. */
  setTotals(totals: UsageTotals): void {
    this.totals = totals;
    this.render();
    // The per-model lines and the budget block follow, once a burst of requests settles.
    window.clearTimeout(this.reloadTimer);
    this.reloadTimer = window.setTimeout(() => void this.load(), 500);
  }

  dispose(): void {
    window.clearTimeout(this.reloadTimer);
  }

  async load(): Promise<void> {
    try {
      this.usage = await api.get<SessionUsage>(
        `/api/sessions/${encodeURIComponent(this.sessionId)}/usage`,
      );
      this.totals = this.usage.totals;
      this.render();
    } catch (error) {
      this.note.textContent = `Usage unavailable: ${errorMessage(error)}`;
    }
  }

  private async save(): Promise<void> {
    if (this.saving) return;
    const body: Record<string, number | null> = {};
    const cost = this.costInput.value.trim();
    const tokens = this.tokensInput.value.trim();
    body.max_cost_usd = cost ? Number(cost) : null;
    body.max_tokens = tokens ? Math.round(Number(tokens)) : null;
    this.saving = true;
    this.note.textContent = "Saving…";
    try {
      const answer = await api.patch<{ session: Session }>(
        `/api/sessions/${encodeURIComponent(this.sessionId)}/budget`,
        body,
      );
      this.formDirty = false;
      this.note.textContent = isBudgetExhausted(answer.session)
        ? "Saved, but the session is still over its budget."
        : "Saved.";
      this.setSession(answer.session);
      this.onSaved?.(answer.session);
      await this.load(); // the budget block says what is spent against the new limits
    } catch (error) {
      this.note.textContent = errorMessage(error);
    } finally {
      this.saving = false;
    }
  }

  /** Told the session the PATCH answered with (the page's store keeps it). */
  onSaved: ((session: Session) => void) | null = null;

  private render(): void {
    const totals = this.totals;
    const session = this.session;
    const maxCost = session?.max_cost_usd ?? null;
    const maxTokens = session?.max_tokens ?? null;
    if (!totals || totals.requests === 0) {
      const limits = [
        maxCost != null ? usd(maxCost) : "",
        maxTokens != null ? `${formatNumber(maxTokens)} tokens` : "",
      ].filter(Boolean);
      this.summary.textContent = `nothing yet${limits.length ? ` (budget ${limits.join(", ")})` : ""}`;
    }
    if (totals) {
      const parts = [
        `${usd(totals.cost_usd)}${totals.priced ? "" : " + unpriced"}`,
        maxCost != null ? ` of ${usd(maxCost)}` : "",
        ` · ${formatNumber(totals.total_tokens)} tokens`,
        maxTokens != null ? ` of ${formatNumber(maxTokens)}` : "",
        ` · ${totals.requests} request${totals.requests === 1 ? "" : "s"}`,
        totals.errors ? `, ${totals.errors} failed` : "",
      ];
      if (totals.requests > 0) this.summary.textContent = parts.join("");
      replace(
        this.table,
        h(
          "dl",
          { class: "facts inline-facts usage-facts" },
          fact("Input", formatNumber(totals.input_tokens)),
          fact("Output", formatNumber(totals.output_tokens)),
          fact("Cache read", formatNumber(totals.cache_read_tokens)),
          fact("Cache write", formatNumber(totals.cache_write_tokens)),
          fact("Requests", formatNumber(totals.requests)),
          fact("Errors", formatNumber(totals.errors)),
          fact("Cost (est.)", usd(totals.cost_usd), totals.priced ? "" : " (some models unpriced)"),
        ),
        this.usage?.by_model.length
          ? h(
              "ul",
              { class: "usage-models" },
              this.usage.by_model.map((m) =>
                h(
                  "li",
                  null,
                  h("code", null, m.model),
                  `: ${formatNumber(m.totals.total_tokens)} tokens, ${usd(m.totals.cost_usd)}`,
                  m.totals.priced ? "" : " (no price in [usage] prices)",
                ),
              ),
            )
          : null,
      );
    }
    const exhausted = session ? isBudgetExhausted(session) : false;
    const reason = this.usage?.budget.exhausted;
    if (exhausted) {
      replace(
        this.alert,
        h(
          "p",
          { class: "error-box budget-exhausted" },
          h("strong", null, "Budget exhausted: "),
          exhaustedText(reason ?? null),
        ),
      );
      this.details.open = true;
    } else {
      this.alert.replaceChildren();
    }
  }
}

function fact(term: string, ...value: (string | HTMLElement)[]): HTMLElement {
  return h("div", { class: "fact" }, h("dt", null, term), h("dd", null, value));
}

/** The refusal in the panel's words: a session budget is raised right here; the daily one
 * is in the daemon's config, and the reason says so. */
function exhaustedText(reason: string | null): string {
  const raise = "Raise the budget below; the agent goes on at its next request.";
  if (!reason) return `the gateway refuses this agent's model requests. ${raise}`;
  const text = reason.replace(/^budget_exhausted:\s*/, "");
  if (!text.startsWith("session budget")) return text;
  return `${text.split(";")[0]}. ${raise}`;
}
