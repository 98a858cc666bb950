/**
 * One session's terminal: xterm.js on a /ws/console socket.
 *
 * - Size: the fit addon sizes the terminal to its box; each change goes to the daemon as a
 *   ``resize`` control frame (the first size rides on the URL), so the PTY follows the
 *   window.
 * - Reconnect: a dropped socket comes back with back-off. The daemon starts every new
 *   viewer with enough recent output to redraw the screen, so the terminal is reset just
 *   before that replay and shows exactly what a reload would.
 * - Flow control: bytes handed to xterm but not yet drawn are counted through its write
 *   callback; past HIGH_WATER the daemon is asked to ``pause`` this viewer, below LOW_WATER
 *   to ``resume``. The agent never waits for us: the daemon holds only our copy.
 */

import { FitAddon } from "@xterm/addon-fit";
import { type ITheme, Terminal } from "@xterm/xterm";
import { socketUrl } from "./api";

const HIGH_WATER = 512 * 1024;
const LOW_WATER = 128 * 1024;
const BACKOFF = [500, 1000, 2000, 4000, 8000, 15000];
const CLOSE_NOT_FOUND = 4404;
const CLOSE_NOT_RUNNING = 4409;

export type TerminalPhase = "idle" | "connecting" | "open" | "waiting" | "exited" | "unavailable";
export interface TerminalState {
  phase: TerminalPhase;
  message: string;
  retryAt?: number;
}

/** xterm's colours from the page's CSS variables, so it follows the light/dark theme. */
export function terminalTheme(): ITheme {
  const css = getComputedStyle(document.documentElement);
  const v = (name: string) => css.getPropertyValue(name).trim() || undefined;
  return {
    background: v("--term-bg"),
    foreground: v("--term-fg"),
    cursor: v("--term-cursor"),
    cursorAccent: v("--term-bg"),
    selectionBackground: v("--term-selection"),
  };
}

export class TerminalPanel {
  readonly term: Terminal;
  private readonly fit = new FitAddon();
  private ws: WebSocket | null = null;
  private pending = 0;
  private paused = false;
  private failures = 0;
  private retryTimer: number | undefined;
  private fitFrame = 0;
  private readonly observer: ResizeObserver;
  private readonly encoder = new TextEncoder();
  private disposed = false;
  private opened = false;
  private errorNote = "";
  state: TerminalState = { phase: "idle", message: "Not connected" };

  constructor(
    private readonly sessionId: string,
    private readonly host: HTMLElement,
    private readonly onState: (state: TerminalState) => void,
  ) {
    this.term = new Terminal({
      cursorBlink: true,
      fontFamily: "ui-monospace, 'DejaVu Sans Mono', 'Liberation Mono', Menlo, Consolas, monospace",
      fontSize: window.matchMedia("(max-width: 600px)").matches ? 12 : 14,
      scrollback: 5000,
      theme: terminalTheme(),
      screenReaderMode: false,
    });
    this.term.loadAddon(this.fit);
    this.term.onData((data) => this.sendBytes(this.encoder.encode(data)));
    this.term.onBinary((data) => {
      const bytes = new Uint8Array(data.length);
      for (let i = 0; i < data.length; i++) bytes[i] = data.charCodeAt(i) & 0xff;
      this.sendBytes(bytes);
    });
    this.term.onResize(({ cols, rows }) => this.sendControl({ type: "resize", cols, rows }));
    this.observer = new ResizeObserver(() => this.scheduleFit());
  }

  /** Put the terminal in the page (its box must be visible to be measured), then connect. */
  open(): void {
    if (this.opened) return;
    this.opened = true;
    this.term.open(this.host);
    this.observer.observe(this.host);
    this.fitNow();
    this.connect();
  }

  get isOpen(): boolean {
    return this.opened;
  }

  /** Connect again now (after the session came back, or the user asked). */
  reconnect(): void {
    if (!this.opened || this.disposed) return;
    window.clearTimeout(this.retryTimer);
    this.failures = 0;
    if (this.ws) {
      const old = this.ws;
      this.ws = null;
      old.close(1000, "reconnect");
    }
    this.connect();
  }

  /** Stop connecting (the session is not running); ``reconnect`` starts again. */
  park(message: string): void {
    window.clearTimeout(this.retryTimer);
    if (this.ws) {
      const old = this.ws;
      this.ws = null;
      old.close(1000, "parked");
    }
    this.setState({ phase: "unavailable", message });
  }

  focus(): void {
    this.term.focus();
  }

  applyTheme(): void {
    this.term.options.theme = terminalTheme();
  }

  fitNow(): void {
    // A hidden box measures 0 x 0; fitting then would shrink the PTY to nothing.
    if (!this.opened || this.host.clientWidth === 0 || this.host.clientHeight === 0) return;
    try {
      this.fit.fit();
    } catch {
      // the renderer is not ready yet; the next resize observation fits
    }
  }

  private scheduleFit(): void {
    cancelAnimationFrame(this.fitFrame);
    this.fitFrame = requestAnimationFrame(() => this.fitNow());
  }

  dispose(): void {
    this.disposed = true;
    window.clearTimeout(this.retryTimer);
    cancelAnimationFrame(this.fitFrame);
    this.observer.disconnect();
    if (this.ws) {
      const old = this.ws;
      this.ws = null;
      old.close(1000, "closed");
    }
    this.term.dispose();
  }

  private setState(state: TerminalState): void {
    this.state = state;
    this.onState(state);
  }

  private connect(): void {
    if (this.disposed) return;
    this.errorNote = "";
    this.setState({ phase: "connecting", message: "Connecting…" });
    const { cols, rows } = this.term;
    const ws = new WebSocket(
      socketUrl(`/ws/console/${encodeURIComponent(this.sessionId)}?cols=${cols}&rows=${rows}`),
    );
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.paused = false;
    let replayStarted = false;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.failures = 0;
      this.setState({ phase: "open", message: "Connected" });
    };
    ws.onmessage = (message) => {
      if (ws !== this.ws) return;
      if (typeof message.data === "string") {
        this.control(message.data);
        return;
      }
      if (!replayStarted) {
        // The first bytes are the daemon's redraw of the current screen: start clean.
        replayStarted = true;
        this.term.reset();
      }
      this.write(new Uint8Array(message.data as ArrayBuffer));
    };
    ws.onclose = (close) => {
      if (ws !== this.ws) return;
      this.ws = null;
      if (this.state.phase === "exited") return;
      if (close.code === CLOSE_NOT_FOUND || close.code === CLOSE_NOT_RUNNING) {
        this.setState({
          phase: "unavailable",
          message: this.errorNote || close.reason || "The terminal is not available",
        });
        return;
      }
      this.failures += 1;
      const base = BACKOFF[Math.min(this.failures - 1, BACKOFF.length - 1)] ?? 15000;
      const delay = Math.round(base * (1 + Math.random() * 0.3));
      this.setState({
        phase: "waiting",
        message: this.errorNote || "Disconnected",
        retryAt: Date.now() + delay,
      });
      this.retryTimer = window.setTimeout(() => this.connect(), delay);
    };
  }

  private control(text: string): void {
    let message: { type?: string; message?: string; code?: number };
    try {
      message = JSON.parse(text) as typeof message;
    } catch {
      return;
    }
    if (message.type === "exit") {
      this.setState({
        phase: "exited",
        message: `The agent's process ended (exit code ${message.code ?? "unknown"})`,
      });
    } else if (message.type === "error") {
      this.errorNote = message.message ?? "error";
      if (this.state.phase === "open") {
        // An error that keeps the socket (a refused resize, say): show it, stay connected.
        this.setState({ phase: "open", message: `Connected; ${this.errorNote}` });
      }
    }
  }

  private write(data: Uint8Array): void {
    const size = data.length;
    this.pending += size;
    if (!this.paused && this.pending > HIGH_WATER) {
      this.paused = this.sendControl({ type: "pause" });
    }
    this.term.write(data, () => {
      this.pending -= size;
      if (this.paused && this.pending < LOW_WATER) {
        this.paused = false;
        this.sendControl({ type: "resume" });
      }
    });
  }

  private sendBytes(bytes: Uint8Array<ArrayBuffer>): void {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(bytes);
  }

  private sendControl(message: object): boolean {
    if (this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }
}
