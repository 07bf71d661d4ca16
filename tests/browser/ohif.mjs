// Opens studies in the real OHIF Viewer in Debian's headless Chromium (playwright-core, no browser
// download) the way a reader does, and reports what the viewer showed:
//   node ohif.mjs BASE_URL STUDIES_JSON OUT_DIR
// STUDIES_JSON: [{"name": ..., "study": StudyInstanceUID}, ...]. For each study: open it (screenshot of the
// viewport: the source), double-click the SEG thumbnail and answer OHIF's "open this Segmentation?" with
// Yes (segments from OHIF's segmentation service, screenshot), double-click the SR (OHIF's SR display set:
// its measurements and whether they were placed on the image, the measurement panel's text, any error
// toast, screenshot), double-click the SC (screenshot). Viewport screenshots are written as
// OUT_DIR/<name>-<step>.png; Python measures them. Console errors and page errors are collected per study.
// Prints one JSON line: {"studies": {name: {...}}}. Exits 1 when the driver itself failed.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [base, studiesFile, outDir] = process.argv.slice(2);
if (!base || !studiesFile || !outDir) {
  console.error("usage: node ohif.mjs BASE_URL STUDIES_JSON OUT_DIR");
  process.exit(2);
}
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const STEP_TIMEOUT_MS = Number(process.env.OHIF_STEP_TIMEOUT_MS || 45000);
const POLL_MS = 250;
const SETTLE_MS = 1000; // after a viewport changed, before its screenshot
const THUMBNAILS = '[data-cy="study-browser-thumbnail"], [data-cy="study-browser-thumbnail-no-image"]';
const VIEWPORT = '[data-cy="viewport-pane"]';
const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--use-angle=swiftshader",
  "--enable-unsafe-swiftshader",
  "--disable-dev-shm-usage",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-quic",
  "--no-first-run",
];

const studies = JSON.parse(readFileSync(studiesFile, "utf8"));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(page, fn, arg, timeout = STEP_TIMEOUT_MS) {
  const end = Date.now() + timeout;
  let value;
  while (Date.now() < end) {
    value = await page.evaluate(fn, arg).catch((e) => ({ error: String(e) }));
    if (value && !value.error && value.done) return value;
    await sleep(POLL_MS);
  }
  return value;
}

// OHIF's first-visit tour (shepherd.js) covers the page and swallows clicks.
async function dropTour(page) {
  await page.evaluate(() => document.querySelectorAll(".shepherd-modal-overlay-container, .shepherd-element").forEach((e) => e.remove()));
}

async function openSeries(page, modality) {
  await dropTour(page);
  const thumbs = page.locator(THUMBNAILS);
  const n = await thumbs.count();
  for (let i = 0; i < n; i++) {
    const text = (await thumbs.nth(i).innerText()).replace(/\s+/g, " ").trim();
    if (text.split(" ").includes(modality)) {
      await thumbs.nth(i).scrollIntoViewIfNeeded();
      await thumbs.nth(i).dblclick();
      return text;
    }
  }
  return null;
}

async function viewportShot(page, file) {
  await sleep(SETTLE_MS);
  await dropTour(page);
  const pane = page.locator(VIEWPORT).first();
  await pane.screenshot({ path: file });
  return file;
}

function segmentationState() {
  const svc = window.services && window.services.segmentationService;
  if (!svc) return { done: false, reason: "no segmentation service" };
  const segmentations = (svc.getSegmentations() || []).map((s) => ({
    label: s.label,
    segments: Object.values(s.segments || {}).filter(Boolean).map((g) => g.label),
  }));
  return { done: segmentations.some((s) => s.segments.length > 0), segmentations };
}

function srState() {
  const sets = window.services.displaySetService.getActiveDisplaySets().filter((d) => d.Modality === "SR");
  const sr = sets[0];
  if (!sr) return { done: false, reason: "no SR display set" };
  const measurements = (sr.measurements || []).map((m) => ({
    tracking: m.TrackingIdentifier,
    loaded: m.loaded === true,
    graphicType: m.graphicType,
    points: m.pointsLength,
    referenced: m.ReferencedSOPInstanceUID || null,
    labels: (m.labels || []).map((l) => `${l.label}: ${l.value}`),
  }));
  const placed = measurements.length > 0 && measurements.every((m) => m.loaded);
  return { done: sr.isLoaded === true && (measurements.length === 0 || placed), isLoaded: sr.isLoaded, measurements };
}

function panelText() {
  const panels = [...document.querySelectorAll("div, section, aside")].filter((e) => {
    const r = e.getBoundingClientRect();
    return r.x > window.innerWidth - 460 && r.width > 150 && r.height > 200 && r.y < 140;
  });
  panels.sort((a, b) => b.innerText.length - a.innerText.length);
  return panels.length ? panels[0].innerText.replace(/\s+/g, " ").trim().slice(0, 4000) : "";
}

async function errorToasts(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('[data-sonner-toast], [role="alert"]')]
      .map((e) => e.innerText.replace(/\s+/g, " ").trim())
      .filter((t) => /wrong|error|fail/i.test(t)),
  );
}

async function runStudy(browser, { name, study }) {
  const result = { study, console_errors: [], page_errors: [], http_errors: [], screenshots: {} };
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  page.on("console", (m) => {
    const text = m.text();
    if (m.type() === "error" || /Error Boundary|TypeError|ReferenceError|Uncaught/.test(text)) {
      result.console_errors.push(text.slice(0, 400));
    }
  });
  page.on("pageerror", (e) => result.page_errors.push(String((e && e.stack) || e).slice(0, 400)));
  page.on("response", (r) => { if (r.status() >= 400) result.http_errors.push(`${r.status()} ${r.url().slice(0, 200)}`); });
  const t0 = Date.now();
  try {
    await page.goto(`${base}/viewer?StudyInstanceUIDs=${study}`, { waitUntil: "load", timeout: STEP_TIMEOUT_MS * 2 });
    await page.waitForSelector(THUMBNAILS, { timeout: STEP_TIMEOUT_MS * 2 });
    result.thumbnails = await page.$$eval(THUMBNAILS, (els) => els.map((e) => e.innerText.replace(/\s+/g, " ").trim()));
    await until(page, () => {
      const vp = window.cornerstone?.getRenderingEngines?.()?.[0]?.getViewports?.()?.[0];
      return { done: !!(vp && vp.getCurrentImageId && vp.getCurrentImageId()) };
    });
    result.screenshots.source = await viewportShot(page, join(outDir, `${name}-1-source.png`));

    result.seg = { thumbnail: await openSeries(page, "SEG") };
    if (result.seg.thumbnail) {
      const yes = page.getByRole("button", { name: "Yes", exact: true });
      await yes.first().waitFor({ timeout: STEP_TIMEOUT_MS }).then(() => yes.first().click(), () => {});
      Object.assign(result.seg, await until(page, segmentationState));
      result.screenshots.seg = await viewportShot(page, join(outDir, `${name}-2-seg.png`));
    }

    result.sr = { thumbnail: await openSeries(page, "SR") };
    if (result.sr.thumbnail) {
      Object.assign(result.sr, await until(page, srState));
      await sleep(SETTLE_MS);
      result.sr.error_toasts = await errorToasts(page);
      const panelButton = page.locator('[data-cy="trackedMeasurements-btn"], [data-cy="measurements-btn"]');
      if (await panelButton.count()) await panelButton.first().click().catch(() => {});
      await sleep(SETTLE_MS);
      result.sr.panel_text = await page.evaluate(panelText);
      result.sr.viewport_text = await page.locator(VIEWPORT).first().innerText().catch(() => "");
      result.screenshots.sr = await viewportShot(page, join(outDir, `${name}-3-sr.png`));
    }

    result.sc = { thumbnail: (await openSeries(page, "OT")) || (await openSeries(page, "SC")) };
    if (result.sc.thumbnail) {
      await until(page, () => {
        const vp = window.cornerstone?.getRenderingEngines?.()?.[0]?.getViewports?.()?.[0];
        const id = vp && vp.getCurrentImageId && vp.getCurrentImageId();
        const image = id && window.cornerstone.cache.getImage(id);
        return { done: !!(image && image.color) };
      });
      result.screenshots.sc = await viewportShot(page, join(outDir, `${name}-4-sc.png`));
    }
    await page.screenshot({ path: join(outDir, `${name}-5-page.png`) });
  } catch (e) {
    result.driver_error = String((e && e.stack) || e).slice(0, 1500);
    await page.screenshot({ path: join(outDir, `${name}-failure.png`) }).catch(() => {});
  } finally {
    result.elapsed_s = (Date.now() - t0) / 1000;
    await context.close();
  }
  return result;
}

const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS });
const out = { studies: {} };
let exitCode = 0;
try {
  for (const entry of studies) out.studies[entry.name] = await runStudy(browser, entry);
} catch (e) {
  out.error = String(e);
  exitCode = 1;
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
process.exit(exitCode);
