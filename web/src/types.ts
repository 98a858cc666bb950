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
