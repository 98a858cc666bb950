/**
 * What the UI needs from WebAuthn auth, which lives in its own screens (``/login``).
 *
 * At start the page asks ``GET /api/auth/status``: a 404 means this daemon has no auth
 * routes (auth off by construction), and the page carries on. If auth is on and we are not
 * signed in, the page goes to the sign-in screen.
 */

import { ApiError, api } from "./api";

/** Where the passkey screens are served (daemon/auth/middleware.py LOGIN_PAGE). */
export const LOGIN_URL = "/login";

export interface AuthInfo {
  /** The daemon has auth routes at all. */
  available: boolean;
  /** Auth is on (auth.mode = webauthn): the API needs a cookie or a token. */
  enabled: boolean;
  signedIn: boolean;
  /** Signed in by the browser's cookie (so signing out means something), not a token. */
  viaCookie: boolean;
  user: string | null;
}

const NO_AUTH: AuthInfo = {
  available: false,
  enabled: false,
  signedIn: true,
  viaCookie: false,
  user: null,
};

interface StatusBody {
  mode?: string;
  authenticated?: boolean;
  via?: string | null;
  user?: { name?: string; display_name?: string } | null;
}

export async function authStatus(): Promise<AuthInfo> {
  let body: StatusBody;
  try {
    body = (await api.get<StatusBody>("/api/auth/status")) ?? {};
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return NO_AUTH;
    throw error;
  }
  const enabled = body.mode !== undefined ? body.mode !== "none" : true;
  return {
    available: true,
    enabled,
    signedIn: body.authenticated ?? !enabled,
    viaCookie: body.via === "cookie",
    user: body.user?.display_name || body.user?.name || null,
  };
}

export function goToLogin(): void {
  const back = encodeURIComponent(location.pathname + location.hash);
  location.assign(`${LOGIN_URL}?next=${back}`);
}

export async function signOut(): Promise<void> {
  await api.post("/api/auth/logout");
  goToLogin();
}
