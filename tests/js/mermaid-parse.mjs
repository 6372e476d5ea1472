// Parse Mermaid diagrams with the real Mermaid parser, for tests/test_pipeline_graph.py.
//
// stdin: a JSON list of diagram sources.  stdout: a JSON list, one entry per diagram:
// {"ok": true, "type": "flowchart-v2"} or {"ok": false, "error": "..."}.
// Mermaid's flowchart database sanitises labels with DOMPurify, which needs a DOM: jsdom
// provides one, installed before Mermaid is imported.
import { readFileSync } from "node:fs";
import { JSDOM } from "jsdom";

const dom = new JSDOM("<!doctype html><html><body></body></html>");
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const { default: mermaid } = await import("mermaid");
mermaid.initialize({ startOnLoad: false, securityLevel: "strict" });

const diagrams = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const text of diagrams) {
  try {
    const parsed = await mermaid.parse(text);
    results.push({ ok: true, type: parsed.diagramType });
  } catch (error) {
    results.push({ ok: false, error: String(error && error.message ? error.message : error) });
  }
}
process.stdout.write(JSON.stringify(results) + "\n");
