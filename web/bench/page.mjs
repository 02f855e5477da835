// Runs a bench page in headless Chromium (tests/browser.mjs) served on 127.0.0.1
// (tests/serve.mjs): its console goes to ours, and its `window.benchResult` comes back.
import { launchChromium } from "../tests/browser.mjs";
import { startServer } from "../tests/serve.mjs";

/** Opens `pagePath` (e.g. "/bench/peers.html?reps=15") and returns its `window.benchResult`. */
export async function runBenchPage(pagePath) {
  const server = await startServer(0);
  const context = await launchChromium();
  try {
    const page = await context.newPage();
    page.on("console", (m) => console.log(`  ${m.text()}`));
    await page.goto(`http://127.0.0.1:${server.address().port}${pagePath}`);
    await page.waitForFunction(() => window.benchResult !== undefined, null, { timeout: 600_000, polling: 500 });
    return await page.evaluate(() => window.benchResult);
  } finally {
    await context.close();
    server.close();
  }
}
