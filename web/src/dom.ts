/**
 * A tiny element builder. Text always goes in as text nodes, never as HTML, so nothing a
 * session, an agent or a file name contains can become markup; event handlers are attached
 * with addEventListener, never as inline attributes (the page runs under a strict CSP).
 */

export type Child = Node | string | number | null | undefined | false;
export type Children = Child | Children[];

type Handler = (event: Event) => void;
export type Props = {
  [key: string]: string | number | boolean | null | undefined | Handler;
};

/** Properties set on the element itself rather than as attributes (live form state). */
const PROPERTIES = new Set(["value", "checked", "selected", "indeterminate"]);

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Props | null = null,
  ...children: Children[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  if (props) {
    for (const [key, value] of Object.entries(props)) {
      if (value === null || value === undefined || value === false) continue;
      if (typeof value === "function") {
        element.addEventListener(key.slice(2).toLowerCase(), value);
      } else if (key === "class") {
        element.className = String(value);
      } else if (PROPERTIES.has(key)) {
        (element as unknown as Record<string, unknown>)[key] = value;
      } else {
        element.setAttribute(key, value === true ? "" : String(value));
      }
    }
  }
  append(element, children);
  return element;
}

export function append(parent: Node, children: Children[] | Children): void {
  const list = Array.isArray(children) ? children : [children];
  for (const child of list) {
    if (Array.isArray(child)) {
      append(parent, child);
    } else if (child instanceof Node) {
      parent.appendChild(child);
    } else if (child !== null && child !== undefined && child !== false) {
      parent.appendChild(document.createTextNode(String(child)));
    }
  }
}

/** Replace every child of ``parent``. */
export function replace(parent: Element, ...children: Children[]): void {
  parent.replaceChildren();
  append(parent, children);
}

/** The element with this id, which the caller knows the page has. */
export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const element = document.getElementById(id);
  if (!element) throw new Error(`#${id} is missing from the page`);
  return element as T;
}

let idCounter = 0;
/** A page-unique id, for label/aria wiring between elements built in code. */
export function uid(prefix: string): string {
  idCounter += 1;
  return `${prefix}-${idCounter}`;
}

export function formatNumber(n: number): string {
  return n.toLocaleString("en-US");
}

export function relativeTime(iso: string | null | undefined): string {
  if (!iso) return "";
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return "";
  const seconds = Math.round((Date.now() - then) / 1000);
  if (seconds < 45) return "just now";
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 24) return `${hours} h ago`;
  const days = Math.round(hours / 24);
  return `${days} d ago`;
}
