// The floor of any call on a WebGPU device, for the pages that report times against it
// (the search demo, bench/pipelines.html): one dispatch of a one-word copy plus its
// read-back, in one submission.

/** The median of `v`. */
export const median = (v) => [...v].sort((a, b) => a - b)[v.length >> 1];

/** One dispatch of a one-word copy plus its read-back, on `device`: the floor of any call. */
export async function floorMs(device, reps = 9) {
  const module = device.createShaderModule({
    code: `@group(0) @binding(0) var<storage, read> src: array<u32>;
           @group(0) @binding(1) var<storage, read_write> dst: array<u32>;
           @compute @workgroup_size(1) fn main() { dst[0] = src[0]; }`,
  });
  const pipeline = device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" } });
  const storage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const [src, dst] = [device.createBuffer({ size: 4, usage: storage }), device.createBuffer({ size: 4, usage: storage })];
  const group = device.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: [{ binding: 0, resource: { buffer: src } }, { binding: 1, resource: { buffer: dst } }],
  });
  const times = [];
  for (let k = 0; k < reps; k++) {
    const t = performance.now();
    const read = device.createBuffer({ size: 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const encoder = device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(1);
    pass.end();
    encoder.copyBufferToBuffer(dst, 0, read, 0, 4);
    device.queue.submit([encoder.finish()]);
    await read.mapAsync(GPUMapMode.READ);
    read.destroy();
    times.push(performance.now() - t);
  }
  return median(times);
}

