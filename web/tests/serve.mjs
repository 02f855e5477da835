// A tiny static server for the demo and the browser tests, on 127.0.0.1 only.
// Serves web/ at / and the repository's reference cases (tests/reference) at
// /reference/; the shared conformance suite (../shared beside the repository, or
// $WGPU_EMBED_SHARED) at /shared/ when it is there; for the search demo, the repository's examples/ at
// /examples/ and the models .ci/setup fetched (target/models) at /models/; files the
// tests write (target/web-artifacts) at /artifacts/; onnxruntime-web's dist/ (an npm
// devDependency, for the interop test) at /ort/.
//
//   node tests/serve.mjs [port]     then open http://127.0.0.1:8000/
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const webDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const sharedDir = path.resolve(process.env.WGPU_EMBED_SHARED ?? path.join(webDir, "..", "..", "shared"));
const roots = [
  ["/reference/", path.resolve(webDir, "..", "tests", "reference")],
  ["/shared/", sharedDir],
  ["/examples/", path.resolve(webDir, "..", "examples")],
  ["/models/", path.resolve(webDir, "..", "target", "models")],
  ["/artifacts/", path.resolve(webDir, "..", "target", "web-artifacts")],
  ["/ort/", path.resolve(webDir, "node_modules", "onnxruntime-web", "dist")],
];

const types = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".wasm": "application/wasm",
  ".json": "application/json",
  ".ts": "text/plain; charset=utf-8",
  ".png": "image/png",
  ".tsv": "text/plain; charset=utf-8",
  ".txt": "text/plain; charset=utf-8",
};

function resolve(urlPath) {
  const p = decodeURIComponent(urlPath.split("?")[0]);
  const [prefix, dir] = roots.find(([prefix]) => p.startsWith(prefix)) ?? ["/", webDir];
  const [root, rest] = [dir, p.slice(prefix.length)];
  const file = path.resolve(root, rest || "index.html");
  // Nothing outside the roots, and not web/'s node_modules or target.
  if (!file.startsWith(root + path.sep) && file !== root) return null;
  if (root === webDir && /^(node_modules|target)(\/|$)/.test(path.relative(webDir, file))) return null;
  return file;
}

export function startServer(port = 0) {
  const server = http.createServer((req, res) => {
    const file = resolve(req.url ?? "/");
    fs.stat(file ?? "", (err, st) => {
      if (!file || err || !st.isFile()) {
        res.writeHead(404, { "content-type": "text/plain" });
        res.end("not found\n");
        return;
      }
      res.writeHead(200, {
        "content-type": types[path.extname(file)] ?? "application/octet-stream",
        "content-length": st.size,
        "cache-control": "no-store",
      });
      fs.createReadStream(file).pipe(res);
    });
  });
  return new Promise((ok, fail) => {
    server.once("error", fail);
    server.listen(port, "127.0.0.1", () => ok(server));
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const server = await startServer(Number(process.argv[2] ?? 8000));
  const { port } = server.address();
  console.log(`serving ${webDir} at http://127.0.0.1:${port}/ (reference cases at /reference/, the shared suite from ${sharedDir} at /shared/)`);
}
