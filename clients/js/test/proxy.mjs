// Starts the proxy example (built here by cargo if needed) with its embedded demo backend on a
// free loopback port, and stops it when the test ends.
import { spawn, spawnSync } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

export async function startProxy(args = []) {
  const built = spawnSync("cargo", ["build", "--quiet", "--example", "proxy"], { cwd: root, stdio: "inherit" });
  if (built.status !== 0) throw new Error("building the proxy example failed");
  const binary = path.join(process.env.CARGO_TARGET_DIR ?? path.join(root, "target"), "debug", "examples", "proxy");
  const child = spawn(binary, ["--listen", "127.0.0.1:0", ...args], { stdio: ["ignore", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout });
  for await (const line of lines) {
    const match = line.match(/^listening on (http:\/\/\S+)$/);
    if (match) {
      lines.on("line", () => {}); // keep draining
      return { url: match[1], stop: () => child.kill() };
    }
  }
  throw new Error("the proxy exited before listening");
}
