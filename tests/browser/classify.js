// Drives graft's upload page in headless Chromium: picks a photo, waits for its labels,
// prints the top one and saves a screenshot.
//
//   node tests/browser/classify.js URL PHOTO SCREENSHOT
//
// Needs Debian's chromium (/usr/bin/chromium) and playwright-core, looked up in NODE_PATH
// and in target/node (`npm install --prefix target/node playwright-core`).
"use strict";

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

async function main() {
  const [url, photo, screenshot] = process.argv.slice(2);
  if (!url || !photo || !screenshot) {
    console.error("usage: node tests/browser/classify.js URL PHOTO SCREENSHOT");
    process.exit(2);
  }
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
  try {
    const page = await browser.newPage({ viewport: { width: 900, height: 520 } });
    page.setDefaultTimeout(60_000);
    const errors = [];
    page.on("pageerror", (err) => errors.push(String(err)));
    await page.goto(url);
    // The header shows the model once /v1/model answered.
    await page.waitForFunction(() => !document.getElementById("model").textContent.includes("loading"));
    await page.setInputFiles("#files", photo);
    const best = page.locator(".card .bar-row.best .label").first();
    await best.waitFor();
    const label = (await best.textContent()).trim();
    const score = (await page.locator(".card .bar-row.best .score").first().textContent()).trim();
    const bars = await page.locator(".card .bar-row").count();
    await page.screenshot({ path: screenshot, fullPage: true });
    if (errors.length) throw new Error(`errors on the page: ${errors.join("; ")}`);
    console.log(`model: ${(await page.locator("#model").textContent()).trim()}`);
    console.log(`bars: ${bars}`);
    console.log(`top label: ${label}`);
    console.log(`top score: ${score}`);
    console.log(`screenshot: ${screenshot}`);
  } finally {
    await browser.close();
  }
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
