/** The shapes of PROTOCOL.md as the UI uses them (the daemon's pydantic models are the truth). */

export type SessionStatus = "creating" | "running" | "stopped" | "failed" | "deleting";
export type AgentState =
  | "working"
  | "waiting_input"
  | "waiting_approval"
  | "idle"
  | "unknown"
  | "error";
export type HealthState =
  | "healthy"
  | "starting"
  | "stopped"
  | "missing"
  | "error"
  | "crash_loop"
  | "worktree_missing"
  | "archived";
export type Action =
  | "start"
  | "recreate"
  | "recreate_fresh"
  | "refresh"
  | "archive"
  | "unarchive"
  | "cleanup"
  | "delete";

export interface Progress {
  step: number;
  total: number;
  message: string;
}

export interface Repository {
  path: string;
  mount_name: string;
  worktree_path: string;
  branch_name: string;
  base_branch: string;
  is_primary: boolean;
  subdir?: string;
}

export interface Session {
  id: string;
  name: string;
  description: string;
  tags: string[];
  backend: "docker" | "local";
  agent: "claude" | "codex";
  model: string | null;
  status: SessionStatus;
  archived: boolean;
  archived_at: string | null;
  agent_state: AgentState;
  /** Why agent_state is error (e.g. budget_exhausted); else null. */
  agent_state_reason?: string | null;
  max_cost_usd?: number | null;
  max_tokens?: number | null;
  /** Estimated spend and tokens over the session's life (usage through the gateway). */
  cost_usd?: number;
  total_tokens?: number;
  repo_path: string;
  repositories: Repository[];
  worktree_path: string;
  branch_name: string;
  base_branch: string;
  prompt: string;
  no_plan_mode: boolean;
  image: string | null;
  container_id: string | null;
  health: HealthState;
  progress: Progress | null;
  error_message: string | null;
  created_at: string;
  updated_at: string;
}

export interface SessionDetail extends Session {
  chat_history: ServerEvent[];
}

export interface HealthReport {
  session_id: string;
  health: HealthState;
  details: Record<string, unknown>;
  available_actions: Action[];
  recommended_action: Action | null;
  data_preservation: Record<string, boolean>;
  reconciliation: {
    attempts: number;
    last_attempt: string | null;
    last_error: string | null;
    next_attempt: string | null;
  };
}

export interface DirectoryEntry {
  name: string;
  path: string;
  is_dir: boolean;
  is_git_repo: boolean;
}

export interface BrowseResponse {
  path: string;
  parent: string | null;
  entries: DirectoryEntry[];
}

export interface UploadedFile {
  name: string;
  path: string;
  size: number;
}

export interface ChatMessage {
  id: string;
  role: "user" | "assistant";
  content: string;
  model?: string | null;
  tokens_input?: number | null;
  tokens_output?: number | null;
}

export interface ToolCall {
  id: string;
  name: string;
  input: unknown;
}

export interface ToolResult {
  call_id: string;
  output: string;
  is_error: boolean;
}

/** Every frame the server sends on /ws/events; fields beyond ``type`` depend on it. */
export interface ServerEvent {
  type: string;
  session_id?: string;
  seq?: number;
  timestamp?: string;
  latest_seq?: number;
  session?: Session;
  progress?: Progress | null;
  status?: SessionStatus;
  health?: HealthState;
  agent_state?: AgentState;
  agent_state_reason?: string | null;
  usage?: UsageTotals;
  archived?: boolean;
  message?: ChatMessage | string;
  call?: ToolCall;
  result?: ToolResult;
  code?: string;
  details?: Record<string, unknown>;
  /** ``session_changes``: the diff's totals and each repository's head. */
  totals?: DiffTotals;
  heads?: Record<string, string>;
  /** ``pull_request``: the session's pull request as it is now. */
  pull_request?: PullRequest;
}

export const CHAT_TYPES = new Set(["chat_message", "tool_call", "tool_result"]);

/** GET /api/system: what the daemon needs to run a session, and what is missing. */
export interface SystemCheck {
  name: string;
  ok: boolean;
  summary: string;
  fix: string | null;
}

export interface SystemStatus {
  ready: boolean;
  checks: SystemCheck[];
  engine: { reachable: boolean; version: string | null };
  image: {
    name: string;
    present: boolean;
    building: boolean;
    progress: Progress | null;
    error: string | null;
  };
  credentials: Record<string, { present: boolean; source: string | null }>;
  data_dir: { path: string; writable: boolean; free_bytes: number | null };
  git: { version: string | null };
}

/** Usage counted by the model gateway (GET /api/sessions/{id}/usage, ``usage`` events). */
export interface UsageTotals {
  requests: number;
  errors: number;
  input_tokens: number;
  output_tokens: number;
  cache_read_tokens: number;
  cache_write_tokens: number;
  total_tokens: number;
  cost_usd: number;
  priced: boolean;
}

export interface SessionUsage {
  session_id: string;
  totals: UsageTotals;
  by_model: { model: string; totals: UsageTotals }[];
  by_day: { day: string; totals: UsageTotals }[];
  budget: {
    max_cost_usd: number | null;
    max_tokens: number | null;
    spent_cost_usd: number;
    spent_tokens: number;
    exhausted: string | null;
  };
}

// --- review and land (daemon/core/changes_models.py) -----------------------------------

export type FileStatus = "added" | "modified" | "deleted" | "renamed" | "copied" | "type_changed";
export type DiffInclude = "all" | "committed" | "uncommitted";
export type MergeStrategy = "merge" | "squash" | "rebase" | "fast-forward";
export type MergeRefusalReason =
  | "uncommitted_changes"
  | "conflicts"
  | "target_dirty"
  | "target_moved"
  | "not_fast_forward"
  | "nothing_to_merge"
  | "branch_moved";

export interface DiffTotals {
  files: number;
  additions: number;
  deletions: number;
}

export interface FileChange {
  path: string;
  old_path: string | null;
  status: FileStatus;
  additions: number;
  deletions: number;
  binary: boolean;
  old_mode: string | null;
  new_mode: string | null;
  summarised: boolean;
}

export interface RepoDiff {
  mount_name: string;
  repo_path: string;
  branch: string;
  base_branch: string;
  merge_base: string;
  head_commit: string;
  includes_uncommitted: boolean;
  totals: DiffTotals;
  files: FileChange[];
  next_offset: number | null;
}

export interface SessionDiff {
  session_id: string;
  include: DiffInclude;
  totals: DiffTotals;
  repositories: RepoDiff[];
}

export interface Commit {
  hash: string;
  author_name: string;
  author_email: string;
  date: string;
  subject: string;
  body: string;
  files: string[];
}

export interface RepoCommits {
  mount_name: string;
  branch: string;
  base_branch: string;
  commits: Commit[];
  truncated: boolean;
}

export interface SessionCommits {
  session_id: string;
  repositories: RepoCommits[];
}

export interface MergeRequest {
  strategy: MergeStrategy;
  repository?: string | null;
  target_branch?: string | null;
  message?: string | null;
  dry_run?: boolean;
  commit_uncommitted?: boolean;
}

export interface MergeResult {
  mount_name: string;
  strategy: MergeStrategy;
  target_branch: string;
  dry_run: boolean;
  clean: boolean;
  conflicts: string[];
  refusal: MergeRefusalReason | null;
  target_before: string;
  target_after: string | null;
  backup_ref: string | null;
  updated_checkout: string | null;
  kept: string;
  branch_head?: string | null;
  /** The session's uncommitted files (git status lines), first 50. */
  uncommitted?: string[];
  committed_uncommitted?: string | null;
  target_worktree?: string | null;
}

export interface AskAgentResult {
  sent: boolean;
  message: string;
  conflicts: string[];
}

export interface PushResult {
  mount_name: string;
  remote: string;
  branch: string;
  commit: string;
  output: string;
}

export interface PullRequestChecks {
  state: "pending" | "success" | "failure" | "none";
  total: number;
  passed: number;
  failed: number;
  pending: number;
}

export interface PullRequest {
  mount_name: string;
  number: number;
  url: string;
  state: "open" | "closed" | "merged";
  draft: boolean;
  title: string;
  head: string;
  base: string;
  checks: PullRequestChecks | null;
  updated_at: string | null;
}

/** The ``session_changes`` event's body. */
export interface ChangesTotals {
  totals: DiffTotals;
  heads: Record<string, string>;
}
