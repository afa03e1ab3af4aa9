// The demo page in a real headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core): two editors make conflicting saves and no change is lost.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { startProxy } from "./proxy.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const screenshot = path.join(process.env.CARGO_TARGET_DIR ?? path.join(root, "target"), "demo-conflict.png");

let proxy;
let browser;
before(async () => {
  proxy = await startProxy();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
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
});
after(async () => {
  await browser?.close();
  proxy?.stop();
});

/** Waits until editor `id` has finished its `count`-th action (sync or save). */
async function settled(page, id, count) {
  await page.waitForSelector(`#${id}[data-done="${count}"]`, { timeout: 10_000 });
}

async function items(page, id) {
  return page.$$eval(`#${id} .items li`, (lis) => lis.map((li) => li.textContent));
}

test("two editors save conflicting changes; the second re-syncs, re-applies and saves", async () => {
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  await page.goto(`${proxy.url}/_demo/`);
  await settled(page, "a", 1);
  await settled(page, "b", 1);
  const etagA = await page.textContent("#a .etag");
  assert.match(etagA, /^"[0-9a-f]+\.[0-9a-f]+"$/);
  assert.equal(await page.textContent("#b .etag"), etagA, "both editors start from one version");

  await page.fill("#a .text", "apple");
  await page.click("#a .add");
  await settled(page, "a", 2);
  await page.fill("#b .text", "banana");
  await page.click("#b .add");
  await settled(page, "b", 2);

  assert.equal(await page.textContent("#a .conflicts"), "0");
  assert.equal(await page.textContent("#b .conflicts"), "1", "B's save was refused once");
  assert.deepEqual(await items(page, "b"), ["apple", "banana"]);

  // A re-syncs and sees B's change; a second sync is answered 304.
  await page.click("#a .sync");
  await settled(page, "a", 3);
  assert.deepEqual(await items(page, "a"), ["apple", "banana"]);
  await page.click("#a .sync");
  await settled(page, "a", 4);
  assert.equal(await page.textContent("#a .not-modified"), "1");
  assert.ok((await page.textContent("#b .log")).includes("412"), "the 412 is shown");

  mkdirSync(path.dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });
});
