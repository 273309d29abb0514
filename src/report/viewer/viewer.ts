/**
 * The report viewer: runs in the browser, from build/report.html (file:// or a CI artifact), with no
 * network. Reads the report data from the page, then draws the summary, the failures, the graph
 * (laid out by d3-hierarchy, one tree per base layer, yielding now and then so the page stays
 * responsive on big projects), the timeline of the last build, and a details panel with the logs of a node.
 *
 * Hooks for tests and scripts: graph nodes are `g.node[data-stack][data-status]`, timeline rows
 * `.row[data-stack]` with segments `.seg[data-step]`, the panel `#panel[data-stack]`. When everything
 * is drawn, `<html data-rendered="1">` and `window.dbuildRenderMs` (ms since navigation start).
 */

type ReportData = import("../model.js").ReportData;
type ReportNode = import("../model.js").ReportNode;
type TimelineRow = import("../model.js").TimelineRow;

// eslint-disable-next-line @typescript-eslint/no-unused-vars -- augments the DOM's Window (global declaration merging)
interface Window {
  dbuildRenderMs?: number;
}

(function main(): void {
  const NODE_W = 212;
  const NODE_H = 72;
  /** Space between two boxes of one column, and between two columns (stack depths). */
  const NODE_GAP = 10;
  const RANK_GAP = 34;
  const MARGIN = 8;
  const SVG_NS = "http://www.w3.org/2000/svg";
  /** Trees laid out per frame before yielding to the browser (keeps the page responsive). */
  const SLICE_MS = 40;

  const dataEl = document.getElementById("dbuild-data");
  if (!dataEl?.textContent) return;
  const data = JSON.parse(dataEl.textContent) as ReportData;
  const byStack = new Map(data.nodes.map((n) => [n.stack, n]));
  const rowByStack = new Map((data.build?.rows ?? []).map((r) => [r.stack, r]));

  // ---------- helpers ----------

  function $(id: string): HTMLElement {
    const e = document.getElementById(id);
    if (!e) throw new Error(`report page has no #${id}`);
    return e;
  }

  function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, ...kids: Array<Node | string>): HTMLElementTagNameMap[K] {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const k of kids) e.append(k);
    return e;
  }

  function esc(s: string): string {
    return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  }

  function bytes(n: number | undefined): string {
    if (n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = n;
    let u = 0;
    while (v >= 1024 && u < units.length - 1) {
      v /= 1024;
      u++;
    }
    return `${v < 10 && u > 0 ? v.toFixed(1) : Math.round(v)} ${units[u] ?? "B"}`;
  }

  function secs(s: number | undefined): string {
    if (s === undefined) return "–";
    if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function clip(s: string, n: number): string {
    return s.length > n ? `${s.slice(0, n - 1)}…` : s;
  }

  function when(t: number): string {
    return new Date(t).toLocaleString();
  }

  // ---------- header and summary ----------

  function header(): void {
    const b = data.build;
    document.title = `dbuild report: ${data.project}`;
    $("title").textContent = `dbuild report: ${data.project}`;
    const state = data.live ? "building" : !b ? "none" : b.interrupted ? "interrupted" : b.ok ? "ok" : "failed";
    const banner = $("banner");
    banner.dataset.state = state;
    banner.textContent =
      state === "building"
        ? `Build in progress (started ${when(b?.start ?? data.generatedAt)}): reload to follow it.`
        : state === "none"
          ? "No build recorded yet: the graph shows what a build would do."
          : `Last build ${state === "ok" ? "succeeded" : state === "interrupted" ? "was interrupted" : "FAILED"} on ${when(b?.start ?? 0)}.`;
    $("meta").textContent = `written ${when(data.generatedAt)} · build dir ${data.buildDir}`;
  }

  function summary(): void {
    const b = data.build;
    const box = $("summary");
    const card = (k: string, label: string, value: string, note = ""): void => {
      box.append(el("div", { class: "card", "data-k": k }, el("div", { class: "v", text: value }), el("div", { class: "k", text: label }), ...(note ? [el("div", { class: "n", text: note })] : [])));
    };
    if (b) {
      card("built", "built", String(b.counts.built));
      card("reused", "reused", String(b.counts.reused + b.counts.restored), b.counts.restored ? `${b.counts.restored} restored from the store` : "fresh already");
      card("pulled", "pulled", String(b.counts.pulled), "from a remote cache");
      if (b.counts.failed) card("failed", "failed", String(b.counts.failed));
      const notBuilt = b.counts.skipped + b.counts.interrupted;
      if (notBuilt) card("skipped", "not built", String(notBuilt));
      if (b.counts.building) card("building", "building", String(b.counts.building));
      card("wall", "wall time", secs(b.wall), `-j ${b.jobs}`);
      card("cpu", "VM CPU time", secs(b.cpuSeconds), "QEMU user + system");
      card("added", "bytes added", bytes(b.bytesAdded), "new images and deliverables");
    }
    card("store", "store size", bytes(data.store.bytes), `${data.store.objects} objects`);
    const counts = new Map<string, number>();
    for (const n of data.nodes) counts.set(n.status, (counts.get(n.status) ?? 0) + 1);
    const legend = $("legend");
    for (const s of ["fresh", "cached", "stale", "failed", "building"]) {
      legend.append(el("span", { class: `chip s-${s}`, "data-status": s }, el("i"), `${s} ${counts.get(s) ?? 0}`));
    }
  }

  function failures(): void {
    const failed = data.nodes.filter((n) => n.status === "failed" && n.failure);
    const box = $("failures");
    if (!failed.length) {
      box.hidden = true;
      return;
    }
    box.append(el("h2", { text: `Failed (${failed.length})` }));
    for (const n of failed) {
      const f = n.failure!;
      const code = f.exitCode === undefined ? "" : f.exitCode === null ? " (killed)" : ` (exit code ${f.exitCode})`;
      const open = el("button", { type: "button", text: "show log" });
      open.addEventListener("click", () => select(n.stack));
      box.append(
        el(
          "div",
          { class: "failure", "data-stack": n.stack },
          el("div", { class: "head" }, el("b", { text: n.stack }), ` failed in step ${f.step}${code}: ${f.message} `, open),
          el("pre", { class: "tail", text: f.logTail.join("\n") }),
        ),
      );
    }
  }

  // ---------- graph ----------

  function statusLine(n: ReportNode): string {
    switch (n.status) {
      case "fresh":
        return n.outcome === "built" ? "fresh: built in the last build" : n.outcome === "pulled" ? "fresh: pulled" : "fresh";
      case "cached":
        return `cached (${n.cachedIn ?? "?"}): ${n.reasons[0] ?? ""}`;
      case "failed":
        return `failed in ${n.failure?.step ?? "?"}`;
      case "building":
        return "building…";
      case "stale":
        return `stale: ${n.reasons[0] ?? "?"}`;
    }
  }

  function nodeSvg(n: ReportNode, x: number, y: number): string {
    const size = n.bytes ? `${bytes(n.bytes.image)} (+${bytes(n.bytes.delta)})` : "no image";
    const dur = n.lastDuration !== undefined ? ` · ${secs(n.lastDuration)}` : "";
    const tip = [n.stack, `${n.kind} layer ${n.layer}`, `status: ${n.status}`, ...n.reasons.map((r) => `  ${r}`)].join("\n");
    return (
      `<g class="node s-${n.status}" data-stack="${esc(n.stack)}" data-status="${n.status}" transform="translate(${Math.round(x - NODE_W / 2)},${Math.round(y - NODE_H / 2)})">` +
      `<title>${esc(tip)}</title><rect class="box" width="${NODE_W}" height="${NODE_H}" rx="6"/><rect class="bar" width="6" height="${NODE_H}" rx="3"/>` +
      `<text x="14" y="17" class="l1">${esc(clip(n.layer, 22))}<tspan class="kind"> ${esc(n.kind === "intermediate" ? "" : n.kind)}${n.target ? " ◎" : ""}</tspan></text>` +
      `<text x="14" y="33" class="l2">key ${esc(n.key.slice(0, 10))}${esc(dur)}</text>` +
      `<text x="14" y="49" class="l3">${esc(size)}</text>` +
      `<text x="14" y="65" class="l4">${esc(clip(statusLine(n), 34))}</text></g>`
    );
  }

  /** Trees, one per base layer, in plan order (parents before children). */
  function trees(): ReportNode[][] {
    const groups = new Map<string, ReportNode[]>();
    for (const n of data.nodes) {
      const root = n.stack.split(":")[0] ?? n.stack;
      let g = groups.get(root);
      if (!g) groups.set(root, (g = []));
      g.push(n);
    }
    return [...groups.values()];
  }

  /**
   * One tree as SVG markup, laid out by d3-hierarchy's tidy tree (the DAG of stack prefixes is a forest:
   * every node has one parent). Left to right: columns are stack depths, children in plan order.
   */
  function drawTree(nodes: ReportNode[]): { svg: string; width: number; height: number } {
    const ids = new Set(nodes.map((n) => n.stack));
    // Normally the base layer's node is the one root; a partial plan may leave more (then a hidden root joins them).
    const roots = nodes.filter((n) => !n.parent || !ids.has(n.parent));
    const hidden = roots.length > 1;
    type Item = { stack: string; parent: string | null; node?: ReportNode };
    const items: Item[] = nodes.map((n) => ({ stack: n.stack, parent: n.parent && ids.has(n.parent) ? n.parent : hidden ? "" : null, node: n }));
    if (hidden) items.unshift({ stack: "", parent: null });
    const root = d3
      .tree()
      .nodeSize([NODE_H + NODE_GAP, NODE_W + RANK_GAP])
      .separation(() => 1)(
      d3
        .stratify<Item>()
        .id((d) => d.stack)
        .parentId((d) => d.parent)(items),
    );
    const shown: Array<d3.HierarchyPointNode<Item>> = [];
    root.each((p) => {
      if (p.data.node) shown.push(p);
    });
    const skip = hidden ? NODE_W + RANK_GAP : 0;
    const x0 = Math.min(...shown.map((p) => p.x));
    const x1 = Math.max(...shown.map((p) => p.x));
    const cx = (p: d3.HierarchyPointNode<Item>): number => MARGIN + NODE_W / 2 + p.y - skip;
    const cy = (p: d3.HierarchyPointNode<Item>): number => MARGIN + NODE_H / 2 + p.x - x0;
    const width = Math.ceil(MARGIN * 2 + NODE_W + Math.max(...shown.map((p) => p.y)) - skip);
    const height = Math.ceil(MARGIN * 2 + NODE_H + x1 - x0);
    let edges = "";
    for (const { source, target } of root.links()) {
      if (!source.data.node) continue;
      // An elbow from the parent's right side to the child's left side; siblings share the trunk.
      const sx = Math.round(cx(source) + NODE_W / 2);
      const mid = Math.round(sx + RANK_GAP / 2);
      edges += `<path class="edge" d="M${sx},${Math.round(cy(source))}H${mid}V${Math.round(cy(target))}H${Math.round(cx(target) - NODE_W / 2)}"/>`;
    }
    let body = "";
    for (const p of shown) body += nodeSvg(p.data.node!, cx(p), cy(p));
    return { svg: `<svg xmlns="${SVG_NS}" class="tree" width="${width}" height="${height}"><g class="edges">${edges}</g>${body}</svg>`, width, height };
  }

  async function graph(): Promise<void> {
    const box = $("graph-canvas");
    box.addEventListener("click", (ev) => {
      const g = (ev.target as Element).closest("g.node");
      const stack = g?.getAttribute("data-stack");
      if (stack) select(stack);
    });
    // Layout is script work, yielded now and then so the page stays responsive; the trees are put in
    // the page at once (one style and layout pass). Each sits in a box the browser skips while it is
    // off screen (content-visibility), which is what keeps a thousand-node graph cheap to draw.
    let html = "";
    let slice = performance.now();
    for (const t of trees()) {
      const d = drawTree(t);
      html += `<div class="tree-box" style="contain-intrinsic-size:${d.width}px ${d.height}px;width:${d.width}px;height:${d.height}px">${d.svg}</div>`;
      if (performance.now() - slice > SLICE_MS) {
        await new Promise((r) => setTimeout(r, 0));
        slice = performance.now();
      }
    }
    box.innerHTML = html;
  }

  function search(): void {
    const input = $("search") as HTMLInputElement;
    input.addEventListener("input", () => {
      const q = input.value.trim().toLowerCase();
      let first: Element | undefined;
      for (const g of document.querySelectorAll("g.node")) {
        const hit = q !== "" && (g.getAttribute("data-stack") ?? "").toLowerCase().includes(q);
        g.classList.toggle("hit", hit);
        g.classList.toggle("dim", q !== "" && !hit);
        if (hit && !first) first = g;
      }
      first?.scrollIntoView({ block: "center", inline: "center" });
    });
  }

  // ---------- timeline ----------

  function timeline(): void {
    const b = data.build;
    const box = $("timeline-rows");
    if (!b || !b.rows.length) {
      $("timeline-empty").hidden = false;
      return;
    }
    const total = Math.max(1, b.wall * 1000, ...b.rows.map((r) => r.end));
    const pct = (ms: number): string => `${((ms / total) * 100).toFixed(3)}%`;
    $("timeline-note").textContent =
      `${b.rows.length} node(s) in ${secs(b.wall)} with -j ${b.jobs}; the critical path (the chain that decided the end) is marked ▸.`;
    // Axis: about eight ticks at a round interval.
    const axis = $("timeline-axis");
    const raw = total / 8;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
    for (let t = 0; t <= total; t += step) axis.append(el("span", { class: "tick", style: `left:${pct(t)}`, text: secs(t / 1000) }));
    // Markup in one piece: thousands of rows are built far faster as a string than node by node.
    const steps = new Set<string>();
    box.innerHTML = b.rows.map((r) => row(r, pct, steps)).join("");
    box.addEventListener("click", (ev) => {
      const stack = (ev.target as Element).closest(".row")?.getAttribute("data-stack");
      if (stack) select(stack);
    });
    box.addEventListener("mouseover", (ev) => segTip(ev.target as Element));
    const legend = $("timeline-legend");
    for (const s of steps) legend.append(el("span", { class: "chip" }, el("i", { class: `seg step-${s}` }), s));
  }

  /** A segment's tooltip (step, duration, detail), made when the pointer first reaches it. */
  function segTip(t: Element): void {
    if (!t.classList.contains("seg") || t.hasAttribute("title")) return;
    const r = rowByStack.get(t.closest(".row")?.getAttribute("data-stack") ?? "");
    const s = r?.steps[Number(t.getAttribute("data-i"))];
    if (!r || !s) return;
    t.setAttribute("title", `${r.stack}: ${s.step} ${secs((s.end - s.start) / 1000)}${s.detail ? ` (${s.detail})` : ""}${s.ok === false ? " — failed" : ""}`);
  }

  function row(r: TimelineRow, pct: (ms: number) => string, seen: Set<string>): string {
    let segs = `<div class="span" style="left:${pct(r.start)};width:${pct(r.end - r.start)}"></div>`;
    r.steps.forEach((s, i) => {
      seen.add(s.step);
      // No title here: thousands of them would double the markup; segTip() adds one on hover.
      segs +=
        `<div class="seg step-${esc(s.step)}${s.ok === false ? " bad" : ""}" data-step="${esc(s.step)}" data-i="${i}" ` +
        `style="left:${pct(s.start)};width:${pct(Math.max(0, s.end - s.start))}"></div>`;
    });
    const tip = `${r.stack}: ${r.outcome} in ${secs((r.end - r.start) / 1000)}${r.cpuSeconds !== undefined ? `, VM CPU ${secs(r.cpuSeconds)}` : ""}`;
    return (
      `<div class="row o-${r.outcome}${r.critical ? " critical" : ""}" data-stack="${esc(r.stack)}" data-outcome="${r.outcome}">` +
      `<div class="label" title="${esc(tip)}">${r.critical ? "▸ " : ""}${esc(r.stack)}</div><div class="track">${segs}</div></div>`
    );
  }

  // ---------- details panel ----------

  function select(stack: string): void {
    const n = byStack.get(stack);
    if (!n) return;
    const panel = $("panel");
    panel.dataset.stack = stack;
    panel.hidden = false;
    const body = $("panel-body");
    body.replaceChildren();
    for (const g of document.querySelectorAll("g.node.sel")) g.classList.remove("sel");
    document.querySelector(`g.node[data-stack="${CSS.escape(stack)}"]`)?.classList.add("sel");
    if (location.hash !== `#node=${encodeURIComponent(stack)}`) history.replaceState(null, "", `#node=${encodeURIComponent(stack)}`);
    body.append(el("h2", {}, el("span", { class: `chip s-${n.status}` }, el("i"), n.status), ` ${n.stack}`));
    const dl = el("dl");
    const item = (k: string, v: string | Node | undefined): void => {
      if (v === undefined || v === "") return;
      dl.append(el("dt", { text: k }), el("dd", {}, v));
    };
    const link = (rel: string): HTMLAnchorElement => el("a", { href: rel.split("/").map(encodeURIComponent).join("/"), text: rel });
    item("layer", `${n.layer} (${n.kind})`);
    item("parent", n.parent ?? "none (base)");
    item("key", n.key);
    if (n.cachedIn) item("cached in", n.cachedIn);
    if (n.bytes) item("image", `${bytes(n.bytes.image)} with its backing chain, ${bytes(n.bytes.delta)} of its own`);
    if (n.deliverable) item("deliverable", el("span", {}, link(n.deliverable), n.bytes?.deliverable !== undefined ? ` (${bytes(n.bytes.deliverable)})` : ""));
    item("last build took", n.lastDuration !== undefined ? secs(n.lastDuration) : undefined);
    item("built at", n.builtAt ? when(Date.parse(n.builtAt)) : undefined);
    const r = rowByStack.get(stack);
    if (r) {
      item("in the last build", `${n.outcome ?? r.outcome}, ${secs((r.end - r.start) / 1000)}${r.cpuSeconds !== undefined ? `, VM CPU ${secs(r.cpuSeconds)}` : ""}`);
      item("steps", r.steps.map((s) => `${s.step} ${secs((s.end - s.start) / 1000)}`).join(" · "));
    }
    if (n.reasons.length) item(n.status === "fresh" ? "notes" : "why not fresh", el("ul", {}, ...n.reasons.map((x) => el("li", { text: x }))));
    body.append(dl);
    if (n.failure) {
      const f = n.failure;
      const code = f.exitCode === undefined ? "" : f.exitCode === null ? " (killed)" : ` (exit code ${f.exitCode})`;
      body.append(el("div", { class: "failure" }, el("b", { text: `failed in step ${f.step}${code}` }), `: ${f.message}`, ...(f.keptDisk ? [el("div", { text: `kept disk: ${f.keptDisk}` })] : [])));
    }
    const log = n.log;
    body.append(el("h3", {}, "Install output", log?.installPath ? el("small", {}, " · ", link(log.installPath)) : ""));
    body.append(el("pre", { class: "log log-install", text: log?.install ?? "(no log: this stack was never built here)" }));
    if (log?.truncated) body.append(el("div", { class: "note", text: "only the end of the log is shown; the link has all of it" }));
    body.append(el("h3", {}, "Serial console (tail)", log?.consolePath ? el("small", {}, " · ", link(log.consolePath)) : ""));
    body.append(el("pre", { class: "log log-console", text: log?.console ?? "(no console log: base layers run on the host)" }));
    const pre = body.querySelector("pre.log-install");
    if (pre) pre.scrollTop = pre.scrollHeight;
  }

  function panel(): void {
    $("panel-close").addEventListener("click", () => {
      $("panel").hidden = true;
      history.replaceState(null, "", location.pathname + location.search);
    });
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape") $("panel").hidden = true;
    });
  }

  function initialSelection(): void {
    const m = /^#node=(.+)$/.exec(location.hash);
    const fromHash = m?.[1] ? decodeURIComponent(m[1]) : undefined;
    // A failed build opens on its (first) failure: that is what the reader came for.
    const target = fromHash ?? (data.live ? undefined : data.nodes.find((n) => n.status === "failed")?.stack);
    if (target) select(target);
  }

  // ---------- go ----------

  header();
  summary();
  failures();
  timeline();
  panel();
  search();
  void graph().then(() => {
    initialSelection();
    window.dbuildRenderMs = performance.now();
    document.documentElement.dataset.rendered = "1";
  });
})();
