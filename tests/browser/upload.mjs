// Drives SpineNode's page in Debian's headless Chromium (playwright-core; no browser download):
//   node upload.mjs URL IMAGE SCREENSHOT_PNG [NODE_TAB_SCREENSHOT_PNG]
// opens URL, uploads IMAGE with the file picker, waits for the overlay, reads the metrics table, opens the
// "Node" tab (and takes its screenshot when asked) and back, and saves a screenshot. UPLOAD_VIA=drop
// drops the file on the drop zone instead of choosing it with the file picker. Prints one JSON line with what the page showed; exits 1 on
// failure (after a screenshot of the failure when possible).
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { chromium } from "playwright-core";

const [url, image, screenshot, nodeScreenshot] = process.argv.slice(2);
if (!url || !image || !screenshot) {
  console.error("usage: node upload.mjs URL IMAGE SCREENSHOT_PNG [NODE_TAB_SCREENSHOT_PNG]");
  process.exit(2);
}
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const TIMEOUT_MS = Number(process.env.UPLOAD_TIMEOUT_MS || 120000);
const ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const profile = mkdtempSync(join(tmpdir(), "spinenode-chromium-"));
let context;
let exitCode = 0;
try {
  // a persistent context is how Playwright takes a --user-data-dir: a fresh, throwaway one
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    viewport: { width: 1200, height: 800 },
    deviceScaleFactor: 1,
  });
  const page = context.pages()[0] || (await context.newPage());
  const consoleErrors = [];
  page.on("console", (msg) => { if (msg.type() === "error") consoleErrors.push(msg.text()); });
  page.on("pageerror", (err) => consoleErrors.push(String(err)));
  page.setDefaultTimeout(TIMEOUT_MS);

  await page.goto(url);
  await page.waitForSelector("#model option", { state: "attached" });  // filled from /api/models
  const model = await page.$eval("#model", (s) => s.value);
  if (process.env.UPLOAD_VIA === "drop") {
    // drag and drop: a DataTransfer holding the file, dropped on the drop zone
    const bytes = readFileSync(image).toString("base64");
    const transfer = await page.evaluateHandle(({ b64, name }) => {
      const data = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([data], name));
      return dt;
    }, { b64: bytes, name: basename(image) });
    await page.dispatchEvent("#drop", "dragover", { dataTransfer: transfer });
    await page.dispatchEvent("#drop", "drop", { dataTransfer: transfer });
  } else {
    await page.setInputFiles("#file", image);
  }
  await page.waitForFunction(() =>
    !document.getElementById("result").hidden &&
    ["original", "mask", "overlay"].every((id) => {
      const img = document.getElementById(id);
      return img && img.complete && img.naturalWidth > 0;
    }));
  const result = await page.evaluate(() => {
    const size = (id) => {
      const img = document.getElementById(id);
      return { width: img.naturalWidth, height: img.naturalHeight };
    };
    const rows = [...document.querySelectorAll("#metrics tbody tr")].map((tr) => ({
      class: tr.dataset.class,
      cells: [...tr.querySelectorAll("td")].map((td) => td.textContent.trim()),
    }));
    const measurements = [...document.querySelectorAll("#measurements tbody tr[data-measurement]")].map((tr) => ({
      measurement: tr.dataset.measurement,
      cells: [...tr.querySelectorAll("td")].map((td) => td.textContent.trim()),
    }));
    const visible = (id) => !document.getElementById(id).hidden;
    return {
      status: document.getElementById("status").textContent,
      images: { original: size("original"), mask: size("mask"), overlay: size("overlay") },
      rows,
      measurements,
      demo_warning: visible("result-warning") ? document.getElementById("result-warning").textContent : null,
      headers: [...document.querySelectorAll("#metrics thead th")].map((th) => th.textContent.trim()),
      downloads: [...document.querySelectorAll("#downloads a")].map((a) => ({ text: a.textContent, href: a.getAttribute("href") })),
    };
  });
  // the Node tab lists the node's DICOM jobs (or says there are none)
  await page.click("#tab-node");
  await page.waitForSelector("#jobs tbody tr");
  await page.waitForFunction(() => [...document.querySelectorAll("#jobs img")].every((img) => img.complete));
  result.jobs = await page.evaluate(() =>
    [...document.querySelectorAll("#jobs tbody tr[data-job]")].map((tr) => ({
      id: Number(tr.dataset.job),
      cells: [...tr.querySelectorAll("td")].map((td) => td.textContent.trim()),
      thumbnail: (() => {
        const img = tr.querySelector("img");
        return img ? { width: img.naturalWidth, height: img.naturalHeight } : null;
      })(),
    })),
  );
  if (nodeScreenshot) await page.screenshot({ path: nodeScreenshot, fullPage: false });
  await page.click("#tab-segment");
  await page.screenshot({ path: screenshot, fullPage: false });
  result.model = model;
  result.console_errors = consoleErrors;
  console.log(JSON.stringify(result));
} catch (err) {
  console.error(String(err && err.stack ? err.stack : err));
  exitCode = 1;
  try {
    const page = context && context.pages()[0];
    if (page) await page.screenshot({ path: screenshot });
  } catch {
    // no screenshot of the failure
  }
} finally {
  if (context) await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(exitCode);
