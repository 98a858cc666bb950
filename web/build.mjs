// Bundle src/main.ts (and the CSS it imports) into dist/assets with content-hashed names,
// then write dist/index.html from index.html pointing at them. index.html is the only file
// whose name never changes, so the daemon serves it with no-cache and everything under
// /assets/ as immutable.
import { mkdir, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { createHash } from "node:crypto";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.join(here, "dist");
const assets = path.join(dist, "assets");

await mkdir(assets, { recursive: true });

const result = await esbuild.build({
  absWorkingDir: here,
  entryPoints: ["src/main.ts"],
  bundle: true,
  format: "esm",
  // Chunks for what is imported lazily (the diff renderer), fetched when first needed.
  splitting: true,
  chunkNames: "[name]-[hash]",
  target: "es2022",
  minify: true,
  sourcemap: "linked",
  legalComments: "linked",
  outdir: assets,
  entryNames: "[name]-[hash]",
  assetNames: "[name]-[hash]",
  metafile: true,
  logLevel: "warning",
});

let script = null;
let style = null;
for (const [file, output] of Object.entries(result.metafile.outputs)) {
  if (output.entryPoint === "src/main.ts") {
    script = path.basename(file);
    if (output.cssBundle) style = path.basename(output.cssBundle);
  }
}
if (!script || !style) throw new Error("esbuild produced no script or no stylesheet");

// The icon is not imported by any script, so it is hashed and copied here.
const iconSvg = await readFile(path.join(here, "favicon.svg"));
const icon = `favicon-${createHash("sha256").update(iconSvg).digest("hex").slice(0, 8)}.svg`;
await writeFile(path.join(assets, icon), iconSvg);

const template = await readFile(path.join(here, "index.html"), "utf8");
const page = template
  .replaceAll("__SCRIPT__", script)
  .replaceAll("__STYLE__", style)
  .replaceAll("__ICON__", icon);
if (page === template) throw new Error("index.html has no __SCRIPT__/__STYLE__ placeholders");
// The page is replaced in one rename, then the files no build output names any more are
// removed: a daemon serving meanwhile never answers a page whose assets are gone.
await writeFile(path.join(dist, "index.html.tmp"), page);
await rename(path.join(dist, "index.html.tmp"), path.join(dist, "index.html"));
const current = new Set(Object.keys(result.metafile.outputs).map((file) => path.basename(file)));
current.add(icon);
for (const name of await readdir(assets)) {
  if (!current.has(name)) await rm(path.join(assets, name), { force: true });
}
console.log(`web: dist/index.html -> assets/${script}, assets/${style}`);
