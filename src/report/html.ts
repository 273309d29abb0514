/**
 * build/report.html: one self-contained page (no server, no network, no CDN) that works from file://
 * and as a CI artifact. The page is this template, the report data as JSON, the graph-layout library
 * (d3-hierarchy, its browser build, with its licence) and the viewer script (src/report/viewer/),
 * all inline.
 */
import { readFileSync, existsSync } from "node:fs";
import { createRequire } from "node:module";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import type { ReportData } from "./model.js";

let assets: { layout: string; viewer: string } | undefined;

/** The viewer is compiled by its own tsconfig next to this module; from src/ (tests) it is under dist/. */
function viewerPath(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const beside = path.join(here, "viewer", "viewer.js");
  if (existsSync(beside)) return beside;
  const built = path.resolve(here, "..", "..", "dist", "report", "viewer", "viewer.js");
  if (existsSync(built)) return built;
  throw new Error(`the report viewer is not built (${beside}): run npm run build`);
}

function loadAssets(): { layout: string; viewer: string } {
  if (!assets) {
    const require = createRequire(import.meta.url);
    // The package exports only its modules (dist/d3-hierarchy.mjs); the browser build sits beside them.
    const dist = path.dirname(require.resolve("d3-hierarchy"));
    const licence = readFileSync(path.join(dist, "..", "LICENSE"), "utf8");
    const layout = readFileSync(path.join(dist, "d3-hierarchy.min.js"), "utf8").replace(/\/\/# sourceMappingURL=.*$/m, "");
    assets = {
      layout: `/* d3-hierarchy (browser build), inlined. Its licence (ISC):\n${licence.replace(/\*\//g, "* /")}\n*/\n${layout}`,
      viewer: readFileSync(viewerPath(), "utf8").replace(/\/\/# sourceMappingURL=.*$/m, ""),
    };
  }
  return assets;
}

/** JSON that is safe inside <script>: no `</script>`, no `<!--`, and the two JS-only line breaks escaped. */
function scriptJson(v: unknown): string {
  return JSON.stringify(v).replace(/</g, "\\u003c").replace(/\u2028/g, "\\u2028").replace(/\u2029/g, "\\u2029");
}

/** Inline script text must not close its element either. */
function scriptText(js: string): string {
  return js.replace(/<\/script/gi, "<\\/script");
}

export function renderReportHtml(data: ReportData): string {
  const a = loadAssets();
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="dbuild">
<title>dbuild report</title>
<style>${CSS}</style>
</head>
<body>
<header>
  <h1 id="title">dbuild report</h1>
  <div id="meta"></div>
  <div id="banner"></div>
</header>
<main>
  <section id="summary"></section>
  <section id="failures"></section>
  <section id="graph">
    <div class="bar"><h2>Images</h2><span id="legend"></span><input id="search" type="search" placeholder="find a stack…" aria-label="find a stack"></div>
    <div class="hint">One tree per base layer; columns are stack depth. Box: layer, short key · last build time, image size with its backing chain (+ its own delta), status. ◎ marks a target. Click a box for its log.</div>
    <div id="graph-canvas"></div>
  </section>
  <section id="timeline">
    <div class="bar"><h2>Last build</h2><span id="timeline-legend"></span></div>
    <div class="hint" id="timeline-note"></div>
    <div id="timeline-empty" hidden>No build with work to do has been recorded in this build dir yet.</div>
    <div class="axis-row"><div class="label"></div><div id="timeline-axis"></div></div>
    <div id="timeline-rows"></div>
  </section>
</main>
<aside id="panel" hidden><button id="panel-close" type="button" aria-label="close">×</button><div id="panel-body"></div></aside>
<script id="dbuild-data" type="application/json">${scriptJson(data)}</script>
<script>${scriptText(a.layout)}</script>
<script>${scriptText(a.viewer)}</script>
</body>
</html>
`;
}

const CSS = `
:root{--fresh:#2e7d32;--cached:#00838f;--stale:#d39e00;--failed:#c62828;--building:#1565c0;--bg:#f6f7f9;--fg:#1d2330;--mute:#667085;--line:#d0d5dd}
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;background:var(--bg);color:var(--fg)}
header{padding:14px 24px 10px;background:#fff;border-bottom:1px solid var(--line)}
h1{margin:0;font-size:20px}h2{font-size:16px;margin:0 12px 0 0}h3{font-size:14px;margin:16px 0 6px}
#meta{color:var(--mute);font-size:12px}
#banner{margin-top:8px;padding:6px 10px;border-radius:6px;font-weight:600;background:#eef2f6}
#banner[data-state=ok]{background:#e7f4e8;color:var(--fresh)}#banner[data-state=failed]{background:#fdeaea;color:var(--failed)}
#banner[data-state=interrupted]{background:#fff6db;color:#8a6d00}#banner[data-state=building]{background:#e6eef9;color:var(--building)}
main{padding:12px 24px 40px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 14px;margin-bottom:14px}
#summary{display:flex;flex-wrap:wrap;gap:10px;background:none;border:0;padding:0}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:8px 14px;min-width:120px}
.card .v{font-size:22px;font-weight:700}.card .k{color:var(--mute);font-size:12px;text-transform:uppercase;letter-spacing:.04em}.card .n{color:var(--mute);font-size:11px}
.card[data-k=failed] .v{color:var(--failed)}
.bar{display:flex;align-items:center;gap:8px;flex-wrap:wrap;margin-bottom:6px}
.hint{color:var(--mute);font-size:12px;margin-bottom:8px}
#search{margin-left:auto;padding:4px 8px;border:1px solid var(--line);border-radius:6px;min-width:200px}
.chip{display:inline-flex;align-items:center;gap:5px;margin-right:10px;font-size:12px;white-space:nowrap}
.chip i{display:inline-block;width:11px;height:11px;border-radius:3px;background:#999}
.chip.s-fresh i{background:var(--fresh)}.chip.s-cached i{background:var(--cached)}.chip.s-stale i{background:var(--stale)}.chip.s-failed i{background:var(--failed)}.chip.s-building i{background:var(--building)}
#failures{border-color:#f1b5b5;background:#fffafa}#failures h2{color:var(--failed);margin-bottom:6px}
.failure{margin:6px 0}.failure .head button{margin-left:8px}
pre{background:#0f1419;color:#e6e6e6;padding:8px 10px;border-radius:6px;overflow:auto;font:12px/1.35 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-all}
pre.tail{max-height:220px}
#graph-canvas{overflow:auto;max-height:80vh;display:flex;flex-direction:column;gap:6px}
.tree-box{flex:none;content-visibility:auto}svg.tree{display:block}
.edge{fill:none;stroke:#98a2b3;stroke-width:1.3}
g.node{cursor:pointer}
g.node .box{fill:#fff;stroke:#98a2b3;stroke-width:1.2}
g.node .bar{fill:#999}
g.node text{font-size:11px;fill:#344054}g.node .l1{font-size:13px;font-weight:700;fill:#101828}g.node .kind{font-weight:400;fill:var(--mute);font-size:11px}
g.node .l4{font-style:italic}
g.s-fresh .bar{fill:var(--fresh)}g.s-fresh .box{fill:#f3faf3;stroke:var(--fresh)}
g.s-cached .bar{fill:var(--cached)}g.s-cached .box{fill:#eef9fa;stroke:var(--cached)}
g.s-stale .bar{fill:var(--stale)}g.s-stale .box{fill:#fffbea;stroke:var(--stale)}
g.s-failed .bar{fill:var(--failed)}g.s-failed .box{fill:#fdeeee;stroke:var(--failed);stroke-width:2}
g.s-building .bar{fill:var(--building)}g.s-building .box{fill:#eef4fc;stroke:var(--building);stroke-width:2;animation:pulse 1.2s ease-in-out infinite}
@keyframes pulse{50%{stroke-opacity:.3}}
g.node.sel .box{stroke:#101828;stroke-width:2.5}g.node.dim{opacity:.25}g.node.hit .box{stroke:#7a5af8;stroke-width:3}
.axis-row,.row{display:flex;align-items:center}
.label{flex:none;width:280px;padding-right:8px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
#timeline-axis{position:relative;flex:1;height:18px;border-bottom:1px solid var(--line)}
.tick{position:absolute;transform:translateX(-50%);font-size:11px;color:var(--mute)}
.tick::after{content:"";position:absolute;left:50%;top:15px;height:4px;border-left:1px solid var(--line)}
#timeline-rows{max-height:70vh;overflow:auto}
.row{height:20px;cursor:pointer;content-visibility:auto;contain-intrinsic-size:auto 20px}.row:hover{background:#f2f4f7}
.row.critical .label{font-weight:700}
.row.o-failed .label{color:var(--failed)}.row.o-skipped .label,.row.o-interrupted .label{color:var(--mute)}
.track{position:relative;flex:1;height:14px}
.track .span{position:absolute;top:6px;height:2px;background:#d0d5dd}
.seg{position:absolute;top:1px;height:12px;min-width:1px;background:#98a2b3;border-right:1px solid #fff}
.chip .seg{position:static;display:inline-block;width:14px;height:11px;border:0}
.seg.bad{outline:2px solid var(--failed);outline-offset:-1px}
.seg.step-queued{background:#d0d5dd}.seg.step-import{background:#6941c6}.seg.step-install-host{background:#9e77ed}
.seg.step-cow{background:#98a2b3}.seg.step-boot{background:#1570ef}.seg.step-rsync{background:#0e9384}.seg.step-install{background:#f79009}
.seg.step-cleanup{background:#7a5af8}.seg.step-poweroff{background:#475467}.seg.step-publish{background:#12b76a}.seg.step-convert{background:#dd2590}
.seg.step-pull{background:#06aed4}.seg.step-push{background:#2e90fa}.seg.step-test{background:#a15c07}.seg.step-tests{background:#a15c07}
#panel{position:fixed;top:0;right:0;bottom:0;width:min(760px,55vw);background:#fff;border-left:1px solid var(--line);box-shadow:-6px 0 24px rgba(16,24,40,.12);overflow:auto;padding:14px 18px 30px}
#panel-close{position:absolute;top:8px;right:12px;font-size:22px;border:0;background:none;cursor:pointer}
#panel h2{font-size:15px;margin-right:30px;word-break:break-all}
#panel dl{display:grid;grid-template-columns:130px 1fr;gap:3px 10px;margin:10px 0}#panel dt{color:var(--mute)}#panel dd{margin:0;word-break:break-all}
#panel dd ul{margin:0;padding-left:18px}
#panel .failure{background:#fdeeee;border:1px solid #f1b5b5;padding:8px;border-radius:6px;color:#7a1010}
pre.log{max-height:45vh}
.note{color:var(--mute);font-size:12px}
`;
