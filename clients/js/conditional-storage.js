// ConditionalStorage: the design note's client, dependency-free, for browsers and Node (>= 18).
//
// It keeps a local copy of one JSON document and the validator the server gave with it.
//
//   sync()         GET with If-None-Match (ETag) or If-Modified-Since (date): a 304 keeps the
//                  local copy, a 200 replaces it.
//   save(update)   applies `update` (a function of the current data returning the new data) and
//                  POSTs the result with If-Match / If-Unmodified-Since. On 412 another client
//                  saved first: it re-syncs, re-applies `update` to the fresh data, and retries,
//                  at most `maxRetries` times. Nothing is silently overwritten.
//
//   const storage = new ConditionalStorage({ url: "/api/storage" });
//   await storage.sync();
//   await storage.save((doc) => ({ ...doc, items: [...doc.items, "apple"] }));

export class ConditionalStorage {
  /**
   * @param {object} options
   * @param {string} options.url       the document's URL (read with GET, written with POST)
   * @param {"etag"|"date"} [options.validator]  which validator to send back (default "etag")
   * @param {number} [options.maxRetries]  re-syncs allowed per save (default 5)
   * @param {typeof fetch} [options.fetch]  the fetch to use (default: the global one)
   */
  constructor({ url, validator = "etag", maxRetries = 5, fetch = globalThis.fetch.bind(globalThis) }) {
    if (validator !== "etag" && validator !== "date") {
      throw new TypeError(`validator must be "etag" or "date", not ${validator}`);
    }
    this.url = url;
    this.validator = validator;
    this.maxRetries = maxRetries;
    this.fetch = fetch;
    /** The local copy of the document, `undefined` before the first sync. */
    this.data = undefined;
    /** The validators of the local copy, as the server sent them. */
    this.etag = null;
    this.lastModified = null;
    /** What happened so far. */
    this.stats = { syncs: 0, notModified: 0, saves: 0, conflicts: 0 };
  }

  /** Fetches the document if it changed. Resolves to `{ changed, data }`. */
  async sync() {
    this.stats.syncs += 1;
    const headers = {};
    if (this.data !== undefined) {
      if (this.validator === "etag" && this.etag) headers["If-None-Match"] = this.etag;
      if (this.validator === "date" && this.lastModified) headers["If-Modified-Since"] = this.lastModified;
    }
    // `no-store`: the browser cache must neither answer for the server nor turn our 304 into a 200.
    const response = await this.fetch(this.url, { headers, cache: "no-store" });
    if (response.status === 304) {
      this.stats.notModified += 1;
      return { changed: false, data: this.data };
    }
    if (!response.ok) {
      throw new Error(`sync of ${this.url} failed: ${response.status} ${await response.text()}`);
    }
    this.data = await response.json();
    this.remember(response);
    return { changed: true, data: this.data };
  }

  /**
   * Saves `update(data)`, re-syncing and re-applying it after each 412. Resolves to the saved
   * data; rejects after `maxRetries` conflicts in a row, or on any other failure.
   */
  async save(update) {
    if (this.data === undefined) await this.sync();
    for (let attempt = 0; ; attempt += 1) {
      const next = update(structuredClone(this.data));
      const headers = { "Content-Type": "application/json" };
      if (this.validator === "etag" && this.etag) headers["If-Match"] = this.etag;
      if (this.validator === "date" && this.lastModified) headers["If-Unmodified-Since"] = this.lastModified;
      const response = await this.fetch(this.url, { method: "POST", headers, body: JSON.stringify(next) });
      if (response.ok) {
        this.stats.saves += 1;
        this.data = next;
        this.remember(response);
        return next;
      }
      if (response.status !== 412) {
        throw new Error(`save to ${this.url} failed: ${response.status} ${await response.text()}`);
      }
      this.stats.conflicts += 1;
      if (attempt >= this.maxRetries) {
        throw new Error(`save to ${this.url} gave up after ${attempt + 1} conflicts`);
      }
      // Dates have one-second resolution: a date shared by two versions never validates, so a
      // date client waits for the server to date the resource afresh.
      if (this.validator === "date") await sleep(250 * (attempt + 1));
      await this.sync();
    }
  }

  remember(response) {
    this.etag = response.headers.get("ETag") ?? this.etag;
    this.lastModified = response.headers.get("Last-Modified") ?? this.lastModified;
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
