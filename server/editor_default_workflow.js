// latentgraph's editor extension: the editor's "default workflow" is our txt2img template.
// Without it, a browser with no saved drafts (or "Load Default") opens the editor's built-in graph, which names
// models this server does not have and makes the page probe model hosts for them.
import { app } from "/scripts/app.js";

const TEMPLATE_URL = "/templates/txt2img.json";

app.registerExtension({
  name: "latentgraph.defaultWorkflow",
  async setup() {
    const response = await fetch(TEMPLATE_URL, { cache: "no-store" });
    if (!response.ok) return;
    const ours = await response.json();
    const loadGraphData = app.loadGraphData.bind(app);
    app.loadGraphData = (graph, ...rest) =>
      loadGraphData(graph ?? structuredClone(ours), ...rest);
  },
});
