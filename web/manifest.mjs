// Write manifest.json next to the built assets: sha256 of every build input (sources, lockfile,
// build script) and of every output. The test suite recomputes both and fails when the committed
// assets are stale, even where Node.js is not installed.
import { createHash } from "node:crypto";
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const out = process.argv[2];
const sha256 = (path) => createHash("sha256").update(readFileSync(path)).digest("hex");
const sources = readdirSync("src").sort().map((name) => `src/${name}`);
const inputs = ["build.sh", "manifest.mjs", "package.json", "package-lock.json", ...sources];

const manifest = {
  inputs: Object.fromEntries(inputs.map((path) => [`web/${path}`, sha256(path)])),
  outputs: Object.fromEntries(["app.js", "app.css"].map((name) => [name, sha256(join(out, name))])),
};
writeFileSync(join(out, "manifest.json"), JSON.stringify(manifest, null, 2) + "\n");
