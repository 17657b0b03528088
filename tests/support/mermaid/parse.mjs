// Parses every ```mermaid block of the Markdown files named on the command line with Mermaid's
// own parser (what the docs site's Mermaid runs in the browser). One line per diagram; exit 1
// when any does not parse.
import fs from "node:fs";
import { JSDOM } from "jsdom";

// Mermaid sanitises labels with DOMPurify, which needs a DOM.
const { window } = new JSDOM("<!doctype html><html><body></body></html>");
globalThis.window = window;
globalThis.document = window.document;

const { default: mermaid } = await import("mermaid");
mermaid.initialize({ startOnLoad: false });
let failed = 0;
for (const file of process.argv.slice(2)) {
  const text = fs.readFileSync(file, "utf8");
  const diagrams = [...text.matchAll(/^```mermaid\n([\s\S]*?)^```$/gm)].map((match) => match[1]);
  for (const [index, diagram] of diagrams.entries()) {
    try {
      await mermaid.parse(diagram);
      console.log(`ok ${file} #${index + 1}`);
    } catch (error) {
      failed += 1;
      console.log(`error ${file} #${index + 1}: ${String(error.message ?? error).split("\n").slice(0, 3).join(" ")}`);
    }
  }
}
process.exit(failed ? 1 : 0);
