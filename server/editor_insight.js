// latentgraph's editor extension: what the engine knows, shown in the editor.
// - a badge over each node after a run: "cached", or "ran 1.2 s" (with "runs" while it waits its turn);
// - a tooltip on the node's title or badge: why it ran (seed changed 1 -> 2, parent 3 re-ran, evicted by the
//   cache...), its wall time, peak memory and the bytes its result holds in the cache;
// - the estimate of the next run beside the Run button, from POST /api/prompt/estimate, updated as the graph
//   changes (which nodes will run, and their expected time from recorded timings; "unknown" without history).
// It listens to `latentgraph.node_reason` WebSocket messages, which the stock editor ignores. It also closes the
// placeholder "Unsaved Workflow" tab that a first visit (?template=...) leaves beside the template's tab.
import { app } from "/scripts/app.js";
import { api } from "/scripts/api.js";

const EVENT = "latentgraph.node_reason";
const POLL_MS = 1000;
const COLORS = {
  cached: ["#d8f5dc", "#1e5a2a"],
  ran: ["#fff1d6", "#7a4a00"],
  pending: ["#e6ecff", "#2d4a99"],
  failed: ["#ffe0e0", "#8a1c1c"],
  interrupted: ["#ffe0e0", "#8a1c1c"],
  not_run: ["#e8e8e8", "#555555"],
};

const state = { promptId: null, reports: {}, estimate: null, estimateError: null, lastPrompt: null };
window.latentgraphInsight = state;

function seconds(ms) {
  if (ms == null) return "?";
  if (ms < 1) return "<1 ms";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`;
}

function bytes(size) {
  if (size == null) return "n/a";
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = size;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

function badgeText(report) {
  if (!report) return "";
  switch (report.status) {
    case "cached": return "cached";
    case "ran": return `ran ${seconds(report.wall_ms)}`;
    case "pending": return "runs";
    case "failed": return "failed";
    case "interrupted": return "interrupted";
    default: return "not run";
  }
}

function reasonText(report) {
  if (!report) return "";
  const lines = [];
  if (report.status === "cached") {
    lines.push("cached: its result was reused, nothing changed since it last ran");
  } else if (report.reason) {
    lines.push(`${report.status === "ran" ? "ran" : report.status}: ${report.reason.text}`);
  } else {
    lines.push(report.status);
  }
  if (report.wall_ms != null) lines.push(`time ${seconds(report.wall_ms)}`);
  if (report.peak_bytes != null) lines.push(`peak memory above its start ${bytes(report.peak_bytes)}`);
  if (report.cache_bytes != null) lines.push(`held in cache ${bytes(report.cache_bytes)}`);
  return lines.join("\n");
}

state.badgeText = (nodeId) => badgeText(state.reports[String(nodeId)]);
state.reasonText = (nodeId) => reasonText(state.reports[String(nodeId)]);

function makeBadge(node) {
  const report = state.reports[String(node.id)];
  const text = badgeText(report);
  const [bg, fg] = COLORS[report?.status] ?? COLORS.not_run;
  return new window.LGraphBadge({ text, bgColor: bg, fgColor: fg, fontSize: 11, height: 18, padding: 5 });
}

function installBadge(node) {
  if (!node || node.__latentgraphBadge || !window.LGraphBadge) return;
  node.__latentgraphBadge = true;
  node.badges = node.badges ?? [];
  node.badges.push(() => makeBadge(node));
}

function installAllBadges() {
  for (const node of app.graph?.nodes ?? []) installBadge(node);
}

function redraw() {
  installAllBadges();
  app.graph?.setDirtyCanvas(true, true);
}

// -- the tooltip ------------------------------------------------------------------------------------------------

const tooltip = document.createElement("div");
tooltip.id = "latentgraph-reason-tooltip";
Object.assign(tooltip.style, {
  position: "fixed", zIndex: 10000, display: "none", pointerEvents: "none", whiteSpace: "pre-line",
  maxWidth: "420px", padding: "6px 9px", borderRadius: "6px", font: "12px/1.4 sans-serif",
  background: "rgba(20, 20, 24, 0.95)", color: "#f2f2f2", border: "1px solid #555",
});

function nodeUnderTitle(canvasX, canvasY) {
  // the title bar and the badge row above it: [pos.x, pos.y - title - badge, width, title + badge]
  const title = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  const nodes = app.graph?.nodes ?? [];
  for (let i = nodes.length - 1; i >= 0; i -= 1) {
    const node = nodes[i];
    const width = node.collapsed ? (node._collapsed_width ?? 120) : node.size[0];
    if (canvasX >= node.pos[0] && canvasX <= node.pos[0] + width
        && canvasY >= node.pos[1] - title - 24 && canvasY <= node.pos[1]) return node;
  }
  return null;
}

function onPointerMove(event) {
  const canvas = app.canvas;
  if (!canvas?.ds) return;
  const rect = canvas.canvas.getBoundingClientRect();
  const [x, y] = canvas.ds.convertCanvasToOffset([event.clientX - rect.left, event.clientY - rect.top]);
  const node = nodeUnderTitle(x, y);
  const text = node ? state.reasonText(node.id) : "";
  if (!text) {
    tooltip.style.display = "none";
    return;
  }
  tooltip.textContent = `${node.title}\n${text}`;
  tooltip.dataset.node = String(node.id);
  tooltip.style.left = `${event.clientX + 14}px`;
  tooltip.style.top = `${event.clientY + 14}px`;
  tooltip.style.display = "block";
}

// -- the estimate -----------------------------------------------------------------------------------------------

const estimateBox = document.createElement("div");
estimateBox.id = "latentgraph-estimate";
Object.assign(estimateBox.style, {
  font: "12px/1.3 sans-serif", padding: "4px 8px", borderRadius: "6px", whiteSpace: "nowrap",
  background: "rgba(60, 60, 70, 0.85)", color: "#eee", marginRight: "6px", alignSelf: "center",
});

function estimateText(answer) {
  if (!answer) return "";
  const count = answer.run.length;
  if (count === 0) return "next run: nothing to do (all cached)";
  const names = answer.nodes.map((n) => n.class_type);
  const shown = names.length > 3 ? `${names.slice(0, 3).join(", ")}, +${names.length - 3}` : names.join(", ");
  const known = answer.nodes.length - answer.unknown.length;
  let time;
  if (known === 0) time = "time unknown (no history yet)";
  else if (answer.unknown.length) time = `≥ ${seconds(answer.total_ms)} (${answer.unknown.length} unknown)`;
  else time = `≈ ${seconds(answer.total_ms)}`;
  return `next run: ${count} node${count === 1 ? "" : "s"} (${shown}), ${time}`;
}

function placeEstimate() {
  if (estimateBox.isConnected) return;
  const group = document.querySelector(".queue-button-group")
    ?? document.querySelector("[data-testid='queue-button']")?.parentElement;
  if (group?.parentElement) {
    group.parentElement.insertBefore(estimateBox, group);
  } else {
    Object.assign(estimateBox.style, { position: "fixed", top: "8px", right: "330px", zIndex: 1000 });
    document.body.appendChild(estimateBox);
  }
}

async function refreshEstimate(force = false) {
  if (!app.graph) return;
  let prompt;
  try {
    prompt = (await app.graphToPrompt()).output;
  } catch {
    return; // a graph the editor cannot convert yet (being edited)
  }
  const body = JSON.stringify({ prompt });
  if (!force && body === state.lastPrompt) return;
  state.lastPrompt = body;
  placeEstimate();
  try {
    const response = await api.fetchApi("/prompt/estimate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body,
    });
    const answer = await response.json();
    if (response.ok) {
      state.estimate = answer;
      state.estimateError = null;
      estimateBox.textContent = estimateText(answer);
      estimateBox.title = answer.nodes.map((n) => `${n.node} ${n.class_type}: `
        + `${n.expected_ms == null ? "unknown" : seconds(n.expected_ms)} (${n.basis}) - ${n.reason.text}`).join("\n");
    } else {
      state.estimate = null;
      state.estimateError = answer;
      estimateBox.textContent = "next run: the workflow is not valid yet";
      estimateBox.title = answer?.error?.message ?? "";
    }
  } catch (error) {
    state.estimateError = String(error);
  }
}

// -- the first visit's extra tab --------------------------------------------------------------------------------

async function closePlaceholderTab() {
  const store = app.extensionManager?.workflow;
  for (let i = 0; i < 40 && store; i += 1) {
    const active = store.activeWorkflow;
    const open = store.openWorkflows ?? [];
    const placeholder = open.find((w) => w !== active && w.isTemporary && /Unsaved Workflow/.test(w.path ?? ""));
    if (active && !/Unsaved Workflow/.test(active.path ?? "") && placeholder) {
      await store.closeWorkflow(placeholder);
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

app.registerExtension({
  name: "latentgraph.insight",
  async setup() {
    document.body.appendChild(tooltip);
    app.canvas?.canvas?.addEventListener("pointermove", onPointerMove);
    app.canvas?.canvas?.addEventListener("pointerleave", () => { tooltip.style.display = "none"; });
    api.addEventListener(EVENT, ({ detail }) => {
      if (detail.prompt_id !== state.promptId) {
        state.promptId = detail.prompt_id;
        state.reports = {};
      }
      Object.assign(state.reports, detail.nodes);
      redraw();
    });
    api.addEventListener("execution_success", () => refreshEstimate(true));
    api.addEventListener("execution_error", () => refreshEstimate(true));
    setInterval(() => { refreshEstimate(false); }, POLL_MS);
    if (new URLSearchParams(window.location.search).has("template")) closePlaceholderTab();
  },
  nodeCreated(node) {
    installBadge(node);
  },
  loadedGraphNode(node) {
    installBadge(node);
  },
});
