// Render a screen's report.html in headless Chromium and use it as a reader
// would: what broke, what was drawn, and what the worklist's sorting and
// filtering did. Prints one JSON object; the Python test judges it.
//
//   node render.mjs CHROMIUM REPORT.html SCREENSHOT.png [FILTER-TEXT]
import { pathToFileURL } from "node:url";
import { chromium } from "playwright-core";

const [executablePath, report, screenshot, needle = ""] = process.argv.slice(2);
if (!screenshot) {
  console.error("usage: node render.mjs CHROMIUM REPORT.html SCREENSHOT.png [FILTER-TEXT]");
  process.exit(2);
}
const url = pathToFileURL(report).href;

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // No network here: Chromium's background services would only fail.
  args: ["--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const result = { console_errors: [], page_errors: [], requests: [], failed_requests: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(10000);
  page.on("console", (m) => { if (m.type() === "error") result.console_errors.push(m.text()); });
  page.on("pageerror", (e) => result.page_errors.push(String(e)));
  page.on("request", (r) => { if (r.url() !== url) result.requests.push(r.url()); });
  page.on("requestfailed", (r) => result.failed_requests.push(r.url()));
  await page.goto(url, { waitUntil: "load" });

  result.title = await page.title();
  result.headings = await page.$$eval("h1, h2", (hs) => hs.map((h) => h.textContent.trim()));
  // Every chart as drawn: inline SVGs and the bar tables, with their size on screen.
  result.charts = await page.$$eval("svg, table.bars", (els) => els.map((el) => {
    const box = el.getBoundingClientRect();
    return { kind: el.tagName.toLowerCase(), width: box.width, height: box.height,
             marks: el.querySelectorAll("rect, .bar span").length };
  }));
  // Text drawn outside its chart's box is cut off on screen.
  result.clipped_texts = await page.$$eval("svg text", (texts) => texts.filter((t) => {
    const svg = t.ownerSVGElement.getBoundingClientRect(), box = t.getBoundingClientRect();
    return box.left < svg.left - 0.5 || box.right > svg.right + 0.5;
  }).map((t) => t.textContent));
  result.page_width = await page.evaluate(() => document.documentElement.scrollWidth);
  result.viewport_width = 1280;

  // The page as opened, before anything is clicked.
  await page.screenshot({ path: screenshot, fullPage: true });

  // The worklist: its rows, then sorting and filtering, if its script showed the controls.
  const rows = () => page.$$eval("#worklist tbody tr", (trs) => trs.map((tr) => ({
    severity: tr.getAttribute("data-severity"),
    first: tr.cells[0].textContent.trim(),
    hidden: tr.hidden,
    text: tr.textContent,
  })));
  const visible = async () => (await rows()).filter((r) => !r.hidden).length;
  const shown = () => page.textContent("#worklist-shown");
  result.worklist = null;
  if (await page.$("#worklist")) {
    const w = { controls_visible: await page.isVisible("#worklist-controls"),
                rows: await rows(), shown_text: await shown() };
    if (w.controls_visible) {
      // Sort by the first column twice: ascending, then descending.
      const first = "#worklist thead th:first-child";
      await page.click(first);
      w.after_sort = (await rows()).map((r) => r.first);
      w.sort_state = await page.getAttribute(first, "aria-sort");
      await page.click(first);
      w.after_second_sort = (await rows()).map((r) => r.first);
      w.second_sort_state = await page.getAttribute(first, "aria-sort");
      // Filter by the first row's highest severity, then by a text, then clear both.
      const severity = w.rows[0].severity;
      await page.selectOption("#worklist-severity", severity);
      w.severity_filter = { severity, visible: await visible(), shown_text: await shown() };
      await page.selectOption("#worklist-severity", "");
      await page.fill("#worklist-filter", needle);
      w.text_filter = { text: needle, visible: await visible(), shown_text: await shown() };
      await page.fill("#worklist-filter", "");
      w.cleared_visible = await visible();
    }
    result.worklist = w;
  }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result));
