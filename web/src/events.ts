/**
 * The page's one /ws/events socket.
 *
 * It subscribes to ``"*"`` for every session's lifecycle events and to each open session
 * for its chat. It remembers the last ``seq`` handled per subscribed session, so after a
 * drop it reconnects with back-off and resubscribes with ``since_seq``: the daemon replays
 * what was missed and nothing is lost or repeated. Session subscriptions are sent before
 * ``"*"`` on a new socket because the daemon keeps one "last sent" mark per session per
 * socket: a lifecycle event delivered through ``"*"`` first would make a later replay start
 * after it. The connection state is published for the header's indicator.
 */

import { socketUrl } from "./api";
import type { ServerEvent } from "./types";

export type ConnectionPhase = "connecting" | "open" | "waiting";
export interface ConnectionState {
  phase: ConnectionPhase;
  /** When ``waiting``: the time (ms since epoch) of the next attempt. */
  retryAt?: number;
  /** Failed attempts since the socket was last open. */
  failures: number;
  /** The socket has been open before: this is a reconnect, so lists may be stale. */
  reconnect: boolean;
}

/** Back-off between attempts, in ms; the last value repeats. */
const BACKOFF = [500, 1000, 2000, 4000, 8000, 15000];
const PING_EVERY_MS = 25000;
const PONG_WITHIN_MS = 10000;

interface Waiter {
  resolve: (latestSeq: number) => void;
  reject: (error: Error) => void;
}

export class EventsClient {
  private ws: WebSocket | null = null;
  private everything = false;
  /** Subscribed sessions and the last seq handled for each (null: not known yet). */
  private sessions = new Map<string, number | null>();
  /** Session subscribes sent and not yet answered, in order (the daemon answers in order). */
  private inflight: { sessionId: string; since: number | null }[] = [];
  /** Callers of subscribeSession waiting for the answer; they survive a reconnect. */
  private waiters = new Map<string, Waiter[]>();
  private listeners = new Set<(event: ServerEvent) => void>();
  private stateListeners = new Set<(state: ConnectionState) => void>();
  private retryTimer: number | undefined;
  private pingTimer: number | undefined;
  private pongTimer: number | undefined;
  private everOpen = false;
  private stopped = false;
  state: ConnectionState = { phase: "connecting", failures: 0, reconnect: false };

  onEvent(listener: (event: ServerEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  onState(listener: (state: ConnectionState) => void): () => void {
    this.stateListeners.add(listener);
    listener(this.state);
    return () => this.stateListeners.delete(listener);
  }

  start(): void {
    this.stopped = false;
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    window.clearTimeout(this.retryTimer);
    this.stopPing();
    this.ws?.close(1000, "page closed");
    this.ws = null;
  }

  /** Connect now instead of waiting for the back-off (the "Retry now" button). */
  retryNow(): void {
    if (this.state.phase !== "waiting") return;
    window.clearTimeout(this.retryTimer);
    this.connect();
  }

  subscribeAll(): void {
    this.everything = true;
    this.send({ type: "subscribe", session_id: "*" });
  }

  /**
   * Follow one session live. Resolves with the daemon's latest seq for it at the moment the
   * subscription took effect: everything after it arrives on this socket, everything up to
   * it is in the store (GET /api/sessions/{id} or /messages).
   */
  subscribeSession(sessionId: string): Promise<number> {
    this.sessions.set(sessionId, null);
    return new Promise((resolve, reject) => {
      const list = this.waiters.get(sessionId) ?? [];
      list.push({ resolve, reject });
      this.waiters.set(sessionId, list);
      this.sendSubscribe(sessionId, null); // or on the next connect
    });
  }

  unsubscribeSession(sessionId: string): void {
    this.sessions.delete(sessionId);
    this.waiters.delete(sessionId);
    this.send({ type: "unsubscribe", session_id: sessionId });
  }

  private sendSubscribe(sessionId: string, since: number | null): void {
    const message: Record<string, unknown> = { type: "subscribe", session_id: sessionId };
    if (since !== null) message.since_seq = since;
    if (this.send(message)) this.inflight.push({ sessionId, since });
  }

  private send(message: object): boolean {
    if (this.ws?.readyState !== WebSocket.OPEN) return false; // sent again on (re)connect
    this.ws.send(JSON.stringify(message));
    return true;
  }

  private setState(state: ConnectionState): void {
    this.state = state;
    for (const listener of this.stateListeners) listener(state);
  }

  private connect(): void {
    if (this.stopped) return;
    const failures = this.state.failures;
    this.setState({ phase: "connecting", failures, reconnect: this.everOpen });
    const ws = new WebSocket(socketUrl("/ws/events"));
    this.ws = ws;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      const reconnect = this.everOpen;
      this.everOpen = true;
      this.inflight = [];
      // Sessions first (see the module docstring), then "*".
      for (const [sessionId, seq] of this.sessions) this.sendSubscribe(sessionId, seq);
      if (this.everything) this.send({ type: "subscribe", session_id: "*" });
      this.setState({ phase: "open", failures: 0, reconnect });
      this.startPing();
    };
    ws.onmessage = (message) => {
      if (ws !== this.ws || typeof message.data !== "string") return;
      this.armPing();
      let event: ServerEvent;
      try {
        event = JSON.parse(message.data) as ServerEvent;
      } catch {
        return;
      }
      this.handle(event);
    };
    ws.onclose = (close) => {
      if (ws !== this.ws) return;
      this.dropped(close.code === 1013);
    };
  }

  private handle(event: ServerEvent): void {
    if (event.type === "pong") return;
    const sessionId = event.session_id;
    if (event.type === "subscribed" && sessionId && sessionId !== "*") {
      const latest = event.latest_seq ?? 0;
      const index = this.inflight.findIndex((p) => p.sessionId === sessionId);
      if (index >= 0) this.inflight.splice(index, 1);
      if (this.sessions.has(sessionId)) {
        this.sessions.set(sessionId, Math.max(this.sessions.get(sessionId) ?? 0, latest));
      }
      for (const waiter of this.waiters.get(sessionId) ?? []) waiter.resolve(latest);
      this.waiters.delete(sessionId);
      return;
    }
    if (event.type === "error" && this.inflight.length > 0) {
      // The daemon answers a socket's messages in order: this answers the oldest subscribe.
      const first = this.inflight.shift();
      if (!first) return;
      const message = typeof event.message === "string" ? event.message : "subscribe failed";
      this.sessions.delete(first.sessionId);
      if (first.since !== null && typeof event.details?.latest_seq === "number") {
        // A since_seq beyond the daemon's latest: our place is lost (its data was reset).
        // The view loads afresh rather than silently missing events.
        this.emit({ type: "resync", session_id: first.sessionId });
      } else {
        for (const waiter of this.waiters.get(first.sessionId) ?? []) {
          waiter.reject(new Error(message));
        }
        this.waiters.delete(first.sessionId);
        this.emit({ type: "subscribe_failed", session_id: first.sessionId, message });
      }
      return;
    }
    if (sessionId && typeof event.seq === "number" && this.sessions.has(sessionId)) {
      const known = this.sessions.get(sessionId);
      if (known !== null && known !== undefined) {
        this.sessions.set(sessionId, Math.max(known, event.seq));
      }
    }
    this.emit(event);
  }

  private emit(event: ServerEvent): void {
    for (const listener of this.listeners) {
      try {
        listener(event);
      } catch (error) {
        console.error("event listener failed", error);
      }
    }
  }

  private dropped(slowClient: boolean): void {
    this.stopPing();
    this.ws = null;
    // Unanswered subscribes are sent again on the next connect; their waiters keep waiting.
    this.inflight = [];
    if (this.stopped) return;
    // Closed for being slow (1013): come straight back, the replay fills the gap.
    const failures = slowClient ? 0 : this.state.failures + 1;
    const delay = slowClient ? 0 : (BACKOFF[Math.min(failures - 1, BACKOFF.length - 1)] ?? 15000);
    const jittered = Math.round(delay * (1 + Math.random() * 0.3));
    this.setState({
      phase: "waiting",
      retryAt: Date.now() + jittered,
      failures,
      reconnect: this.everOpen,
    });
    this.retryTimer = window.setTimeout(() => this.connect(), jittered);
  }

  // A socket whose peer vanished may stay "open" for minutes; a ping that gets no answer
  // within PONG_WITHIN_MS ends it so the reconnect starts.
  private startPing(): void {
    this.stopPing();
    this.pingTimer = window.setInterval(() => {
      if (!this.send({ type: "ping" })) return;
      window.clearTimeout(this.pongTimer);
      this.pongTimer = window.setTimeout(() => {
        const ws = this.ws;
        if (ws) {
          this.ws = null;
          ws.close();
          this.dropped(false);
        }
      }, PONG_WITHIN_MS);
    }, PING_EVERY_MS);
  }

  private armPing(): void {
    window.clearTimeout(this.pongTimer);
  }

  private stopPing(): void {
    window.clearInterval(this.pingTimer);
    window.clearTimeout(this.pongTimer);
  }
}
