// Heatmaps drawn in the browser from the raw CAM maps the API returns, as the server draws
// them: ReLU, scale by the map's peak, bilinear upsampling, JET colours, opacity rising with
// the evidence (nothing below 15% of the peak). The opacity slider scales the whole layer.

const FLOOR = 0.15;

export function normalise(map) {
  const peak = Math.max(0, ...map.flat());
  return map.map((row) => row.map((v) => (peak > 0 ? Math.max(v, 0) / peak : 0)));
}

// The findings called present, combined (pixel-wise max, each weighted by its probability
// relative to the strongest); with none present, the most probable finding's map.
export function combined(maps, findings) {
  let shown = findings.map((f, i) => (f.present ? i : -1)).filter((i) => i >= 0);
  if (!shown.length) {
    shown = [findings.reduce((best, f, i) => (f.probability > findings[best].probability ? i : best), 0)];
  }
  const top = Math.max(...shown.map((i) => findings[i].probability)) || 1;
  const parts = shown.map((i) => normalise(maps[i]).map((r) => r.map((v) => (v * findings[i].probability) / top)));
  return parts[0].map((row, y) => row.map((_, x) => Math.max(...parts.map((p) => p[y][x]))));
}

function jet(v) {
  const c = (x) => Math.round(255 * Math.min(1, Math.max(0, x)));
  return [c(1.5 - Math.abs(4 * v - 3)), c(1.5 - Math.abs(4 * v - 2)), c(1.5 - Math.abs(4 * v - 1))];
}

// Draw `map` (h x w values in [0, 1]) onto `canvas` at width x height pixels.
export function draw(canvas, map, width, height) {
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(width, height);
  const h = map.length, w = map[0].length;
  const sx = w / width, sy = h / height;
  for (let y = 0; y < height; y++) {
    const fy = Math.min(Math.max((y + 0.5) * sy - 0.5, 0), h - 1);
    const y0 = Math.floor(fy), y1 = Math.min(y0 + 1, h - 1), ty = fy - y0;
    for (let x = 0; x < width; x++) {
      const fx = Math.min(Math.max((x + 0.5) * sx - 0.5, 0), w - 1);
      const x0 = Math.floor(fx), x1 = Math.min(x0 + 1, w - 1), tx = fx - x0;
      const v = (map[y0][x0] * (1 - tx) + map[y0][x1] * tx) * (1 - ty)
        + (map[y1][x0] * (1 - tx) + map[y1][x1] * tx) * ty;
      const [r, g, b] = jet(v);
      const o = 4 * (y * width + x);
      img.data[o] = r; img.data[o + 1] = g; img.data[o + 2] = b;
      img.data[o + 3] = Math.round(255 * Math.min(1, Math.max(0, (v - FLOOR) / (1 - FLOOR))));
    }
  }
  ctx.putImageData(img, 0, 0);
}

// The X-ray with the heatmap over it at `opacity`, as a PNG blob for download.
export function compose(image, heat, opacity) {
  const out = document.createElement("canvas");
  out.width = heat.width;
  out.height = heat.height;
  const ctx = out.getContext("2d");
  ctx.drawImage(image, 0, 0, out.width, out.height);
  ctx.globalAlpha = opacity;
  ctx.drawImage(heat, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}
