// Drive the real ComfyUI frontend (served by a running ComfyUI) in headless Chromium.
//
// Usage: node scripts/comfy_frontend.mjs JOB.json
// JOB = {url, playwright, chromium, out, items: [{name, mode, api?, ui?, screenshot?}]}
//   mode "build": load the API prompt `api` with app.loadApiJson (the frontend lays it out), fix seeds,
//                 and return the UI workflow it serialises plus its graphToPrompt output.
//   mode "check": load the UI workflow `ui` with app.loadGraphData and return graphToPrompt's output.
//   mode "run":   load the API prompt `api`, queue it from the page (app.queuePrompt), wait until the
//                 server reports it done and `settle_ms` more, then save a PNG of every canvas the node
//                 widgets drew (3D viewers: WebGL canvases other than the graph) to `canvas_shots`
//                 (a folder): files canvas_<i>.png, listed in the result's `canvases`.
//   `screenshot`: path of a PNG of the canvas after loading.
// Writes {name: {ui, prompt, missing, console, blocked}} to `out`: `console` holds the page's console
// errors/warnings and page errors while the item ran, `blocked` the non-localhost requests refused.
// Only localhost requests are allowed.

import fs from "node:fs";
import { createRequire } from "node:module";

const job = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const require = createRequire(import.meta.url);
const { chromium } = require(job.playwright);

const browser = await chromium.launch({
  executablePath: job.chromium || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"],
});
const results = {};
let consoleLog = [];
let blocked = [];
try {
  const context = await browser.newContext({ viewport: { width: 1920, height: 1080 } });
  await context.route("**/*", (route) => {
    const u = new URL(route.request().url());
    if (["127.0.0.1", "localhost"].includes(u.hostname) || u.protocol === "blob:" || u.protocol === "data:") {
      return route.continue();
    }
    blocked.push(u.href);
    return route.abort();
  });
  await context.addInitScript(() => {
    localStorage.setItem("vueNodesBannerDismissed", "true");
    localStorage.setItem("Comfy.TutorialCompleted", "true");
  });
  const page = await context.newPage();
  page.on("pageerror", (e) => { console.error("pageerror:", e.message); consoleLog.push("pageerror: " + e.message); });
  page.on("console", (m) => {
    if (["error", "warning"].includes(m.type())) consoleLog.push(m.type() + ": " + m.text());
  });
  await page.goto(job.url, { waitUntil: "domcontentloaded" });
  await page.waitForFunction(() => window.app && window.app.graph && window.app.vueAppReady !== false,
                             null, { timeout: 90000 });
  await page.waitForTimeout(1500);
  for (const item of job.items) {
    consoleLog = [];
    blocked = [];
    const res = await page.evaluate(async (item) => {
      const app = window.app;
      const opts = { showMissingNodesDialog: false, showMissingModelsDialog: false };
      if (item.mode === "run") {
        await app.loadApiJson(item.api, item.name + ".json");
        const done = new Promise((resolve) => {
          for (const ev of ["execution_success", "execution_error", "execution_interrupted"]) {
            app.api.addEventListener(ev, () => resolve(ev), { once: true });
          }
        });
        await app.queuePrompt(0, 1);
        var ended = await Promise.race([done, new Promise((r) => setTimeout(() => r("timeout"), 60000))]);
      } else if (item.mode === "build") {
        await app.loadApiJson(item.api, item.name + ".json");
        for (const node of app.graph._nodes) {
          for (const w of node.widgets || []) {
            if (w.name === "control_after_generate") w.value = "fixed";
          }
        }
        app.graph.setDirtyCanvas(true, true);
      } else {
        await app.loadGraphData(item.ui, true, false, item.name + ".json", opts);
      }
      const missing = app.graph._nodes.filter((n) => n.type && !window.LiteGraph.registered_node_types[n.type])
        .map((n) => n.type);
      const { output } = await app.graphToPrompt();
      return { ui: app.graph.serialize(), prompt: output, missing, ended: typeof ended === "undefined" ? null : ended };
    }, item);
    if (item.mode === "run") {
      await page.waitForTimeout(item.settle_ms || 5000);
      const handles = await page.$$("canvas");
      res.canvases = [];
      let i = 0;
      for (const h of handles) {
        const info = await h.evaluate((c) => ({ id: c.id, w: c.clientWidth, h: c.clientHeight }));
        if (info.id === "graph-canvas" || info.w < 64 || info.h < 64) continue;
        const path = `${item.canvas_shots}/canvas_${i++}.png`;
        await h.screenshot({ path });
        res.canvases.push({ path, ...info });
      }
    }
    if (item.screenshot) {
      await page.evaluate(() => {
        const c = window.app.canvas;
        // fit the whole graph in view
        const nodes = window.app.graph._nodes;
        let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
        for (const n of nodes) {
          x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
          x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
        }
        const el = c.canvas;
        const w = el.clientWidth || el.width, h = el.clientHeight || el.height;
        // leave room for the side bar (left) and the top bar
        const scale = Math.min((w - 110) / (x1 - x0), (h - 135) / (y1 - y0), 1.0);
        c.ds.scale = scale;
        c.ds.offset[0] = 85 / scale - x0;
        c.ds.offset[1] = 100 / scale - y0;
        c.setDirty(true, true);
        c.draw(true, true);
      });
      await page.waitForTimeout(700);
      const canvas = await page.$("#graph-canvas");
      await (canvas || page).screenshot({ path: item.screenshot });
    }
    res.console = consoleLog;
    res.blocked = blocked;
    results[item.name] = res;
  }
} finally {
  await browser.close();
}
fs.writeFileSync(job.out, JSON.stringify(results));
