/**
 * The page's copy of every session, kept current by /ws/events and by the answers to the
 * REST calls the page makes. Views subscribe and re-render; nothing else holds session state.
 */

import type { Session } from "./types";

type Listener = (changed: string | null) => void;

export class SessionStore {
  readonly sessions = new Map<string, Session>();
  /** The list has been loaded once: before that an empty list means "not known yet". */
  loaded = false;
  private listeners = new Set<Listener>();

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(changed: string | null): void {
    for (const listener of this.listeners) listener(changed);
  }

  /** Replace the whole list (a fresh GET /api/sessions). */
  reset(sessions: Session[]): void {
    this.sessions.clear();
    for (const session of sessions) this.sessions.set(session.id, session);
    this.loaded = true;
    this.emit(null);
  }

  upsert(session: Session): void {
    this.sessions.set(session.id, session);
    this.emit(session.id);
  }

  patch(id: string, fields: Partial<Session>): void {
    const current = this.sessions.get(id);
    if (!current) return;
    this.sessions.set(id, { ...current, ...fields });
    this.emit(id);
  }

  remove(id: string): void {
    if (this.sessions.delete(id)) this.emit(id);
  }

  get(id: string): Session | undefined {
    return this.sessions.get(id);
  }

  /** Newest first, ties by id, exactly as the API orders them. */
  list(): Session[] {
    return [...this.sessions.values()].sort(
      (a, b) => b.created_at.localeCompare(a.created_at) || b.id.localeCompare(a.id),
    );
  }
}
