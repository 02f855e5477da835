// The semantic-search demo (search.html): the corpus (examples/search/corpus.tsv) is
// tokenized here with BERT's uncased WordPiece over the checkpoint's vocab.txt, each
// sentence's mean word embedding computed by an EmbeddingBag on the GPU, quantized to
// int8 on the GPU, and searched by a Retriever. A query is one recording (the bag, the
// search, the read of the hits): one submission, one read-back. Its pipelines are made
// and run once while the page loads, so the first query costs what the later ones do. With `?autorun` the page searches once, then a
// few more times, and leaves the hits and the timings (first, warm, and the floor: one
// dispatch of a one-word copy plus its read-back on the same device) in
// window.searchResult (the browser tests screenshot it).
import init, { Gpu, SafetensorsFile } from "./pkg/wgpu_embed_web.js";
import { floorMs, median } from "./floor.js";

const $ = (id) => document.getElementById(id);
const HITS = 5;

/** BERT's basic tokenizer (lower case, accents stripped, punctuation split) and WordPiece. */
function tokenizer(vocabText) {
  const vocab = new Map(vocabText.split("\n").map((t, i) => [t, i]));
  const unk = vocab.get("[UNK]");
  const punct = /[\p{P}\p{S}]/u;
  const words = (text) => {
    const out = [];
    const clean = text.toLowerCase().normalize("NFD").replace(/\p{Mn}/gu, "");
    for (const w of clean.split(/\s+/)) {
      let cur = "";
      for (const ch of w) {
        if (punct.test(ch)) {
          if (cur) out.push(cur);
          out.push(ch);
          cur = "";
        } else cur += ch;
      }
      if (cur) out.push(cur);
    }
    return out;
  };
  const pieces = (word) => {
    if (word.length > 100) return [unk];
    const ids = [];
    for (let start = 0; start < word.length; ) {
      let end = word.length, id;
      for (; start < end; end--) {
        id = vocab.get((start > 0 ? "##" : "") + word.slice(start, end));
        if (id !== undefined) break;
      }
      if (id === undefined) return [unk];
      ids.push(id);
      start = end;
    }
    return ids;
  };
  return (text) => words(text).flatMap(pieces);
}

/** Token ids of each text as one flat list, and the bags' offsets. */
function bags(tokenize, texts) {
  const ids = [], offsets = [];
  for (const t of texts) {
    offsets.push(ids.length);
    ids.push(...tokenize(t));
  }
  return { ids: Int32Array.from(ids), offsets: Int32Array.from(offsets) };
}


async function fetchOk(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status} (run \`bash .ci/setup\` to fetch the model)`);
  return r;
}

async function main() {
  await init();
  const gpu = await Gpu.create();
  const info = gpu.adapterInfo();
  const ji = (await navigator.gpu.requestAdapter())?.info ?? {};
  const adapter = info.name || ji.description || [ji.vendor, ji.architecture].filter(Boolean).join(" ") || "the GPU";
  const [model, vocab, corpusText] = await Promise.all([
    fetchOk("/models/all-MiniLM-L6-v2/model.safetensors").then((r) => r.arrayBuffer()),
    fetchOk("/models/all-MiniLM-L6-v2/vocab.txt").then((r) => r.text()),
    fetchOk("/examples/search/corpus.tsv").then((r) => r.text()),
  ]);
  const t0 = performance.now();
  const file = new SafetensorsFile(new Uint8Array(model));
  const words = gpu.embeddingBag(await file.upload(gpu, "embeddings.word_embeddings.weight"), { mode: "mean" });
  const tokenize = tokenizer(vocab);
  const corpus = corpusText.trim().split("\n").map((l) => l.split("\t"));
  const embed = (texts) => {
    const b = bags(tokenize, texts);
    return words.forward(b.ids, b.offsets);
  };
  /** A query recorded: its bag, the search, the reads of the hits. */
  const recordQuery = (query) => {
    const run = gpu.record();
    const b = bags(tokenize, [query]);
    const q = run.bag(words, b.ids, b.offsets);
    const top = run.search(retriever, q, HITS);
    run.read(top.scores);
    run.read(top.indices);
    return { run, release: () => (q.release(), top.scores.release(), top.indices.release()) };
  };
  const embedded = await embed(corpus.map((c) => c[1]));
  const retriever = await gpu.tensorRetriever(embedded, { scheme: "int8_rowwise", metric: "cosine" });
  embedded.release();
  // The query's pipelines, made and run once now, so that the first query is not the
  // slowest (WebGPU compiles a pipeline before its first dispatch).
  const warm = recordQuery("warm up");
  await warm.run.submit();
  warm.run.free();
  warm.release();
  const readyMs = performance.now() - t0;
  $("status").textContent =
    `${adapter} (${info.backend}, ${info.deviceType}); ${corpus.length} sentences embedded and quantized in ${readyMs.toFixed(0)} ms`;

  const search = async (query) => {
    const t = performance.now();
    const { run, release } = recordQuery(query);
    const [scoreBytes, rowBytes] = await run.submit();
    run.free();
    release();
    const [scores, rows] = [new Float32Array(scoreBytes.buffer), new Int32Array(rowBytes.buffer)];
    const ms = performance.now() - t;
    const hits = Array.from(rows, (r, i) => ({ score: scores[i], name: corpus[r][0], text: corpus[r][1] }));
    $("hits").replaceChildren(
      ...hits.map((h) => {
        const li = document.createElement("li");
        li.innerHTML = `<span class="score"></span> <code></code> <span class="text"></span>`;
        li.querySelector(".score").textContent = h.score.toFixed(3);
        li.querySelector("code").textContent = h.name;
        li.querySelector(".text").textContent = h.text;
        return li;
      }),
    );
    $("errors").textContent = "";
    $("timing").textContent =
      `${ms.toFixed(1)} ms: the query embedded, scored against every row, the best ${HITS} read back (one submission, one read-back)`;
    return { query, ms, hits };
  };
  $("search").disabled = false;
  $("search").onclick = () => search($("query").value).catch((e) => ($("errors").textContent = `⚠ ${e.message ?? e}`));
  $("query").onkeydown = (e) => e.key === "Enter" && $("search").click();
  if (new URLSearchParams(location.search).has("autorun")) {
    const before = gpu.stats();
    const result = await search($("query").value);
    const dispatches = gpu.stats().dispatches - before.dispatches;
    const warmMs = [];
    for (let k = 0; k < 5; k++) warmMs.push((await search($("query").value)).ms);
    const floor = await floorMs(gpu.device);
    const timings = { firstMs: result.ms, warmMs: median(warmMs), floorMs: floor, dispatches };
    $("timing").textContent +=
      `; first query ${timings.firstMs.toFixed(1)} ms, warm ${timings.warmMs.toFixed(1)} ms, floor ${floor.toFixed(2)} ms`;
    window.searchResult = { ok: true, corpus: corpus.length, readyMs, ...result, ...timings };
  }
}

main().catch((e) => {
  $("status").textContent = `⚠ ${e.message ?? e}`;
  window.searchResult = { ok: false, error: String(e.message ?? e) };
});
