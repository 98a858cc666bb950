/**
 * One line of a checklist, as the first-run checklist (system.ts) and the Credentials panel
 * (credentials.ts) draw it: a mark for the eye, its meaning in words for a screen reader,
 * the title, then the line's own content. Both lists share the look (``.check``) and the
 * accessible name (the title, with the mark's meaning before it).
 */

import { type Children, type Props, h, uid } from "./dom";

export interface CheckLine {
  /** The line's own attributes (``data-*``; a ``class`` replaces "check", so names it too). */
  attrs: Props;
  /** ``data-state``: ok, fail or warn. */
  state: string;
  mark: string;
  /** What the mark means, said before the title. */
  spoken: string;
  title: string;
}

export function checkLine(line: CheckLine, ...body: Children[]): HTMLLIElement {
  const titleId = uid("check");
  return h(
    "li",
    {
      class: "check",
      ...line.attrs,
      "data-state": line.state,
      "aria-labelledby": titleId,
    },
    h("span", { class: "check-mark", "aria-hidden": "true" }, line.mark),
    h(
      "div",
      { class: "check-body" },
      h(
        "p",
        { class: "check-title", id: titleId },
        h("span", { class: "visually-hidden" }, `${line.spoken}: `),
        h("strong", null, line.title),
      ),
      ...body,
    ),
  );
}
