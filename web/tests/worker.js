// The worker of worker.html: the same layers as the page's main thread, off it. Gets
// {table, shape, ids, offsets}, answers {lookup, bag} (Float32Arrays) or {error}.
import init, { Gpu } from "../pkg/wgpu_embed_web.js";

self.onmessage = async ({ data }) => {
  try {
    await init();
    const gpu = await Gpu.create();
    const weight = await gpu.tensor(data.table, data.shape);
    const lookup = await (await gpu.embedding(weight).forward(data.ids, [data.ids.length])).toFloat32Array();
    const bag = await (await gpu.embeddingBag(weight, { mode: "mean" }).forward(data.ids, data.offsets)).toFloat32Array();
    self.postMessage({ lookup, bag }, [lookup.buffer, bag.buffer]);
  } catch (e) {
    self.postMessage({ error: String(e?.message ?? e) });
  }
};
