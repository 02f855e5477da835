// Debian's Chromium with WebGPU over SwiftShader, headless, as the browser tests and the
// peer bench start it (a fresh profile each time, removed by `close`).
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

export const chromiumFlags = [
  "--no-sandbox",
  "--enable-unsafe-webgpu",
  "--enable-features=Vulkan",
  "--use-vulkan=swiftshader",
  "--use-webgpu-adapter=swiftshader",
  "--enable-unsafe-swiftshader",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
];

/** A browser context; `close()` also removes its profile. */
export async function launchChromium() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "wgpu-embed-chromium-"));
  // launchPersistentContext takes the profile as --user-data-dir.
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: chromiumFlags,
    viewport: { width: 1280, height: 1000 },
  });
  const close = context.close.bind(context);
  context.close = async () => {
    await close();
    fs.rmSync(profile, { recursive: true, force: true });
  };
  return context;
}
