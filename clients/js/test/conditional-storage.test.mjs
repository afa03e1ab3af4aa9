// ConditionalStorage against a real proxy and its demo backend, over loopback.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { ConditionalStorage } from "../conditional-storage.js";
import { startProxy } from "./proxy.mjs";

let proxy;
before(async () => {
  proxy = await startProxy();
});
after(() => proxy.stop());

let next = 0;
/** A fresh document for each test, created with If-None-Match: * (create-only). */
async function newDocument(data) {
  const url = `${proxy.url}/api/test/${process.pid}-${next++}`;
  const created = await fetch(url, {
    method: "PUT",
    headers: { "If-None-Match": "*", "Content-Type": "application/json" },
    body: JSON.stringify(data),
  });
  assert.equal(created.status, 200);
  return url;
}

test("sync fetches the document and its validators, then gets 304 while it is unchanged", async () => {
  const url = await newDocument({ items: ["a"] });
  const storage = new ConditionalStorage({ url });
  const first = await storage.sync();
  assert.deepEqual(first, { changed: true, data: { items: ["a"] } });
  assert.match(storage.etag, /^"[0-9a-f]+\.[0-9a-f]+"$/);
  assert.ok(storage.lastModified);
  const second = await storage.sync();
  assert.equal(second.changed, false);
  assert.equal(storage.stats.notModified, 1);
});

for (const validator of ["etag", "date"]) {
  test(`two clients saving conflicting changes lose nothing (${validator} validators)`, async () => {
    const url = await newDocument({ items: [] });
    const alice = new ConditionalStorage({ url, validator });
    const bob = new ConditionalStorage({ url, validator });
    await alice.sync();
    await bob.sync();
    await alice.save((doc) => ({ items: [...doc.items, "from alice"] }));
    await bob.save((doc) => ({ items: [...doc.items, "from bob"] }));
    assert.ok(bob.stats.conflicts >= 1, "bob's first save was based on the old version");
    const check = new ConditionalStorage({ url });
    const { data } = await check.sync();
    assert.deepEqual(data.items.sort(), ["from alice", "from bob"]);
  });
}

test("many clients incrementing one counter lose no update", async () => {
  const url = await newDocument({ count: 0 });
  const clients = Array.from({ length: 8 }, () => new ConditionalStorage({ url, maxRetries: 100 }));
  await Promise.all(clients.map(async (client) => {
    for (let i = 0; i < 10; i += 1) await client.save((doc) => ({ count: doc.count + 1 }));
  }));
  const { data } = await new ConditionalStorage({ url }).sync();
  assert.equal(data.count, 80);
});

test("a save gives up after its bounded retries", async () => {
  const url = await newDocument({ n: 0 });
  const stale = new ConditionalStorage({ url, maxRetries: 0 });
  await stale.sync();
  await new ConditionalStorage({ url }).save(() => ({ n: 1 }));
  await assert.rejects(stale.save(() => ({ n: 2 })), /gave up after 1 conflicts/);
  const { data } = await new ConditionalStorage({ url }).sync();
  assert.deepEqual(data, { n: 1 });
});

test("an unknown validator kind is refused", () => {
  assert.throws(() => new ConditionalStorage({ url: "http://127.0.0.1/", validator: "weak" }), TypeError);
});
