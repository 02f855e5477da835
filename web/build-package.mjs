// Makes web/pkg (what `wasm-pack build --target web` wrote) an npm package a bundler or
// a plain <script type="module"> can use: an `exports` map (ESM and its types, the
// .wasm as an asset), the crate's version, and README.npm.md as its README.
//
//   wasm-pack build --target web --release && node build-package.mjs
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const web = path.dirname(fileURLToPath(import.meta.url));
const pkg = path.join(web, "pkg");
const manifest = JSON.parse(fs.readFileSync(path.join(pkg, "package.json"), "utf8"));
const version = /^version = "([^"]+)"/m.exec(fs.readFileSync(path.join(web, "Cargo.toml"), "utf8"))[1];
const out = {
  name: "wgpu-embed-web",
  version,
  description: manifest.description,
  license: manifest.license,
  type: "module",
  keywords: ["webgpu", "wasm", "embedding", "embedding-bag", "quantization", "retrieval", "pytorch"],
  main: "./wgpu_embed_web.js",
  module: "./wgpu_embed_web.js",
  types: "./wgpu_embed_web.d.ts",
  exports: {
    ".": { types: "./wgpu_embed_web.d.ts", import: "./wgpu_embed_web.js", default: "./wgpu_embed_web.js" },
    "./wgpu_embed_web_bg.wasm": "./wgpu_embed_web_bg.wasm",
    "./package.json": "./package.json",
  },
  files: ["wgpu_embed_web_bg.wasm", "wgpu_embed_web_bg.wasm.d.ts", "wgpu_embed_web.js", "wgpu_embed_web.d.ts", "README.md"],
  sideEffects: false,
};
fs.writeFileSync(path.join(pkg, "package.json"), JSON.stringify(out, null, 2) + "\n");
fs.copyFileSync(path.join(web, "README.npm.md"), path.join(pkg, "README.md"));
console.log(`pkg/: wgpu-embed-web ${version}, exports ${Object.keys(out.exports).join(", ")}`);
