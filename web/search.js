// The semantic-search demo (search.html): the corpus (examples/search/corpus.tsv) is
// tokenized here with BERT's uncased WordPiece over the checkpoint's vocab.txt, each
// sentence's mean word embedding computed by an EmbeddingBag on the GPU, quantized to
// int8 on the GPU, and searched by a Retriever. With `?autorun` the page searches once
// and leaves the hits in window.searchResult (the browser tests screenshot it).
import init, { Gpu, SafetensorsFile } from "./pkg/wgpu_embed_web.js";

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
  const embedded = await embed(corpus.map((c) => c[1]));
  const retriever = await gpu.tensorRetriever(embedded, { scheme: "int8_rowwise", metric: "cosine" });
  embedded.release();
  const readyMs = performance.now() - t0;
  $("status").textContent =
    `${adapter} (${info.backend}, ${info.deviceType}); ${corpus.length} sentences embedded and quantized in ${readyMs.toFixed(0)} ms`;

  const search = async (query) => {
    const t = performance.now();
    const q = await embed([query]);
    const top = await retriever.searchTensor(q, HITS);
    const scores = await top.scores.toFloat32Array();
    const rows = new Int32Array((await top.indices.toUint8Array()).buffer);
    q.release(), top.scores.release(), top.indices.release();
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
    $("timing").textContent = `${ms.toFixed(1)} ms: the query embedded, scored against every row, the best ${HITS} read back`;
    return { query, ms, hits };
  };
  $("search").disabled = false;
  $("search").onclick = () => search($("query").value).catch((e) => ($("errors").textContent = `⚠ ${e.message ?? e}`));
  $("query").onkeydown = (e) => e.key === "Enter" && $("search").click();
  if (new URLSearchParams(location.search).has("autorun")) {
    const result = await search($("query").value);
    window.searchResult = { ok: true, corpus: corpus.length, readyMs, ...result };
  }
}

main().catch((e) => {
  $("status").textContent = `⚠ ${e.message ?? e}`;
  window.searchResult = { ok: false, error: String(e.message ?? e) };
});
