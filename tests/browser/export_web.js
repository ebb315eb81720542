// Opens a `graft export --format web` folder in headless Chromium, served from a local
// static server, with every request that is not to that server blocked; classifies each
// photo through the page's file picker and prints one JSON line:
//   {"load_ms": N, "results": [{"photo": P, "label": L, "ms": N}], "blocked": [URL...]}
//
//   node tests/browser/export_web.js EXPORT_DIR PHOTO...
//
// Needs Debian's chromium (/usr/bin/chromium, or $CHROMIUM) and playwright-core, looked up
// in NODE_PATH and in target/node (`npm install --prefix target/node playwright-core`).
"use strict";

const fs = require("fs");
const http = require("http");
const path = require("path");

function loadPlaywright() {
  const searched = [
    ...(process.env.NODE_PATH || "").split(path.delimiter).filter(Boolean),
    path.join(__dirname, "..", "..", "target", "node", "node_modules"),
  ];
  try {
    return require(require.resolve("playwright-core", { paths: searched }));
  } catch (err) {
    console.error(
      `playwright-core not found in ${searched.join(", ")}: ` +
        "run `npm install --prefix target/node playwright-core` in the repository root"
    );
    process.exit(2);
  }
}

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".mjs": "text/javascript",
  ".wasm": "application/wasm",
  ".onnx": "application/octet-stream",
  ".json": "application/json",
};

// A plain static server, as a user would put the folder behind: no special headers.
function serve(root) {
  const server = http.createServer((req, res) => {
    const rel = decodeURIComponent(new URL(req.url, "http://x").pathname).replace(/^\/+/, "");
    const file = path.join(root, rel || "index.html");
    if (!file.startsWith(root) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404);
      res.end("not found");
      return;
    }
    res.writeHead(200, { "Content-Type": TYPES[path.extname(file)] || "application/octet-stream" });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

async function main() {
  const [dir, ...photos] = process.argv.slice(2);
  if (!dir || photos.length === 0) {
    console.error("usage: node tests/browser/export_web.js EXPORT_DIR PHOTO...");
    process.exit(2);
  }
  const root = path.resolve(dir);
  const server = await serve(root);
  const origin = `http://127.0.0.1:${server.address().port}`;
  const { chromium } = loadPlaywright();
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    timeout: 60_000,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const blocked = [];
  const errors = [];
  try {
    const context = await browser.newContext();
    await context.route("**/*", (route) => {
      const url = route.request().url();
      if (url.startsWith(origin + "/") || url.startsWith("blob:") || url.startsWith("data:")) {
        return route.continue();
      }
      blocked.push(url);
      return route.abort();
    });
    const page = await context.newPage();
    page.setDefaultTimeout(120_000);
    page.on("pageerror", (err) => errors.push(String(err)));
    page.on("console", (msg) => {
      if (msg.type() === "error") errors.push(msg.text());
    });
    await page.goto(`${origin}/index.html`);
    await page.waitForFunction(
      () => document.body.dataset.loadMs !== undefined || document.getElementById("model").className === "error"
    );
    const loadMs = await page.evaluate(() => document.body.dataset.loadMs);
    if (loadMs === undefined) {
      throw new Error(`the model did not load: ${await page.textContent("#model")}`);
    }
    const results = [];
    for (const [i, photo] of photos.entries()) {
      await page.setInputFiles("#files", photo);
      // The newest card comes first; wait until it has its labels or an error.
      await page.waitForFunction(
        (n) => {
          const cards = document.querySelectorAll(".card");
          return cards.length === n && cards[0].querySelector(".bar-row.best, .error");
        },
        i + 1
      );
      const card = page.locator(".card").first();
      const error = await card.locator(".error").count();
      if (error) throw new Error(`${photo}: ${await card.locator(".error").textContent()}`);
      const label = (await card.locator(".bar-row.best .label").textContent()).trim();
      const ms = Number(await card.getAttribute("data-ms"));
      results.push({ photo, label, ms });
    }
    console.log(JSON.stringify({ load_ms: Number(loadMs), results, blocked, errors }));
  } finally {
    await browser.close();
    server.close();
  }
}

main().catch((err) => {
  console.error(String(err && err.stack ? err.stack : err));
  process.exit(1);
});
