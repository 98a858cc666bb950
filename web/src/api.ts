/**
 * REST calls to the daemon. Every failure becomes an ApiError carrying PROTOCOL's code,
 * message and details (or a clear stand-in when the daemon did not answer with JSON), so a
 * view can always show the user what went wrong; nothing here swallows an error.
 */

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

/** Called on a 401 from any request (auth turned on, or our sign-in expired). */
let unauthorized: (() => void) | null = null;
export function onUnauthorized(handler: () => void): void {
  unauthorized = handler;
}

type Body = unknown;

export async function request<T>(method: string, path: string, body?: Body): Promise<T> {
  const init: RequestInit = { method, credentials: "same-origin", headers: {} };
  if (body instanceof FormData) {
    init.body = body; // the browser sets the multipart boundary
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    (init.headers as Record<string, string>)["Content-Type"] = "application/json";
  }
  let response: Response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, "NETWORK_ERROR", `The daemon did not answer (${String(error)})`);
  }
  const text = await response.text();
  let data: unknown = null;
  if (text && (response.headers.get("Content-Type") ?? "").includes("json")) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    if (response.status === 401 && unauthorized) unauthorized();
    const error = (data as { error?: { code?: string; message?: string; details?: unknown } })
      ?.error;
    if (error?.message) {
      throw new ApiError(response.status, error.code ?? "ERROR", error.message, error.details);
    }
    const snippet = text
      .replace(/<[^>]*>/g, " ")
      .trim()
      .slice(0, 200);
    throw new ApiError(
      response.status,
      `HTTP_${response.status}`,
      `${method} ${path} failed: ${response.status} ${response.statusText}${snippet ? `: ${snippet}` : ""}`,
    );
  }
  return data as T;
}

export const api = {
  get: <T>(path: string) => request<T>("GET", path),
  post: <T>(path: string, body?: Body) => request<T>("POST", path, body),
  patch: <T>(path: string, body?: Body) => request<T>("PATCH", path, body),
  delete: <T>(path: string) => request<T>("DELETE", path),
};

/** A readable one-liner for any thrown value. */
export function errorMessage(error: unknown): string {
  if (error instanceof ApiError) return error.message;
  if (error instanceof Error) return error.message;
  return String(error);
}

/** ``/ws/...`` on this page's host, ws: or wss: to match the page. */
export function socketUrl(path: string): string {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}
