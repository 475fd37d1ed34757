/**
 * busdet in the browser: the model runs here, with ONNX Runtime Web (WebAssembly), and the
 * images never leave this computer. Served by `make web` (tools/serve_web.py); see README.
 *
 * The same contract as busdet.inference.detect: the file's RGB uint8 pixels [1, H, W, 3] at
 * their own size go into model.onnx (the graph resizes and letterboxes to 640 itself), every
 * detection comes back, and the threshold only filters them, so moving it never reruns the
 * model. Boxes are pixel corners (max exclusive), as in busdet.boxes; the tables write
 * integer x, y, width, height rounded as Python's round() does.
 *
 * Classes, operating point, colours, texts and table columns come from site.json, which
 * busdet.web derives from model_info.json, label_map.pbtxt and the package's constants; so do
 * the in-distribution check's statistics (ood_stats.npz), cut-offs and warning texts (busdet.ood).
 */
import * as ort from './vendor/ort.wasm.min.mjs';

const CONFIG_URL = 'site.json';
const MODEL_INPUT = 'inputs';

// The only place that knows the model's output names and layouts.
const MODEL_OUTPUTS = {
  count: 'num_detections',     // int32 [1]
  boxes: 'detection_boxes',    // float32 [1, N, 4]: normalized [ymin, xmin, ymax, xmax]
  classes: 'detection_classes', // int32 [1, N]: label-map ids
  scores: 'detection_scores',  // float32 [1, N]
  features: 'image_features',  // float32 [1, D]: pooled backbone features (busdet.ood); absent in older models
};

/** Model outputs -> {detections, features} as busdet.inference.run_model: every detection in image
 * pixels, most confident first, and the pooled features (Float32Array [D], or null without them). */
function readOutputs(outputs, width, height, classes) {
  const features = outputs[MODEL_OUTPUTS.features]?.data ?? null;
  return { detections: readDetections(outputs, width, height, classes), features };
}

function readDetections(outputs, width, height, classes) {
  const count = Number(outputs[MODEL_OUTPUTS.count].data[0]);
  const boxes = outputs[MODEL_OUTPUTS.boxes].data;
  const ids = outputs[MODEL_OUTPUTS.classes].data;
  const scores = outputs[MODEL_OUTPUTS.scores].data;
  const clip = (value) => Math.min(1, Math.max(0, value));
  const detections = [];
  for (let i = 0; i < count; i += 1) {
    const [ymin, xmin, ymax, xmax] = Array.from(boxes.subarray(4 * i, 4 * i + 4), clip);
    const id = Number(ids[i]);
    const box = { xmin: xmin * width, ymin: ymin * height, xmax: xmax * width, ymax: ymax * height,
                  label: classes[id] ?? `class_${id}`, score: scores[i] };
    // Clipping can flatten a box hanging over the edge to nothing the user could see.
    if (box.xmax - box.xmin >= 1 && box.ymax - box.ymin >= 1) detections.push(box);
  }
  return detections.sort((a, b) => b.score - a.score);
}

// ---------------------------------------------------------------- numbers as Python writes them

/** Python's round() to an integer: halves go to the even neighbour. */
function roundHalfEven(value) {
  const rounded = Math.round(value);
  return Math.abs(value % 1) === 0.5 && rounded % 2 !== 0 ? rounded - 1 : rounded;
}

/** Python's f'{value:.{digits}f}' (value >= 0): toFixed on the exact binary value, ties to even. */
function fixedText(value, digits) {
  const exact = value.toFixed(20);
  const point = exact.indexOf('.');
  const cut = point + 1 + digits;
  const kept = digits ? exact.slice(0, cut) : exact.slice(0, point);
  if (/^50*$/.test(exact.slice(cut)) && Number(kept.at(-1)) % 2 === 0) return kept;
  return value.toFixed(digits);
}

/** Python's round(value, digits). */
function roundDigits(value, digits) {
  return Number(fixedText(value, digits));
}

/** Python's template.format(...values) for the fields busdet's texts use: {}, {:.Nf}, {:.N%}. */
function formatPython(template, ...values) {
  let next = 0;
  return template.replace(/\{(?::\.(\d+)([f%]))?\}/g, (field, digits, type) => {
    const value = values[next++];
    if (type === 'f') return fixedText(value, Number(digits));
    // Python's '%' multiplies by 100 in floating point, then formats as 'f'.
    if (type === '%') return `${fixedText(value * 100, Number(digits))}%`;
    return String(value);
  });
}

/** A float cell as pandas writes it (Python's repr): 0.8123, 1.0. */
function formatFloat(value) {
  return Number.isInteger(value) ? value.toFixed(1) : String(value);
}

/** busdet.boxes.box_to_pixel_xywh: integer [x, y, width, height] of the CSVs. */
function pixelXywh(box) {
  const [xmin, ymin] = [roundHalfEven(box.xmin), roundHalfEven(box.ymin)];
  return [xmin, ymin, roundHalfEven(box.xmax) - xmin, roundHalfEven(box.ymax) - ymin];
}

// ---------------------------------------------------------------- findings (busdet.results)

function aboveThreshold(boxes, threshold) {
  return boxes.filter((box) => box.score >= threshold);
}

/** busdet.results.image_finding: [sentence, score or null] of the shown boxes. */
function imageFinding(boxes) {
  const malignant = boxes.filter((box) => box.label === 'malignant').map((box) => box.score);
  if (malignant.length) return ['suspicious for malignancy', Math.max(...malignant)];
  if (boxes.length) {
    const best = boxes.reduce((a, b) => (b.score > a.score ? b : a));
    return [`${best.label}-appearing lesion`, best.score];
  }
  return ['no lesion above the threshold', null];
}

/** busdet.results.finding_line (no calibration in PNG/JPEG/BMP): "benign-appearing lesion (0.80)". */
function findingLine(boxes) {
  const [sentence, score] = imageFinding(boxes);
  return score === null ? sentence : `${sentence} (${score.toFixed(2)})`;
}

// ---------------------------------------------------------------- the in-distribution check (busdet.ood)

/** busdet.ood.mahalanobis_distances for one feature vector: distance to the nearest dataset mean. */
function mahalanobisDistance(features, learned) {
  const size = features.length;
  const centred = new Float64Array(size);
  let nearest = Infinity;
  for (const mean of learned.means) {
    for (let d = 0; d < size; d += 1) centred[d] = features[d] - mean[d];
    let squared = 0;
    for (let d = 0; d < size; d += 1) {
      const row = learned.precision[d];
      let dot = 0;
      for (let e = 0; e < size; e += 1) dot += row[e] * centred[e];
      squared += centred[d] * dot;
    }
    nearest = Math.min(nearest, Math.sqrt(Math.max(squared, 0)));
  }
  return nearest;
}

/** busdet.ood.colour_fraction: pixels whose channels differ by more than colour_spread. */
function colourFraction(pixels, spread) {
  let coloured = 0;
  for (let i = 0; i < pixels.length; i += 3) {
    const [r, g, b] = [pixels[i], pixels[i + 1], pixels[i + 2]];
    if (Math.max(r, g, b) - Math.min(r, g, b) > spread) coloured += 1;
  }
  return coloured / (pixels.length / 3);
}

/**
 * busdet.ood.flat_fraction: pixels brighter than `darkest` whose every channel's 3x3 neighbourhood
 * spans at most `spread` levels. OpenCV's dilate - erode with a 3x3 kernel: at the edge the
 * neighbourhood is what lies inside the image (its default border ignores outside pixels), done
 * here as a row pass then a column pass, which gives the same max and min.
 */
function flatFraction(pixels, width, height, spread, darkest) {
  const rowMax = new Uint8Array(pixels.length);
  const rowMin = new Uint8Array(pixels.length);
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1) {
      for (let c = 0; c < 3; c += 1) {
        const at = (y * width + x) * 3 + c;
        let [high, low] = [pixels[at], pixels[at]];
        if (x > 0) [high, low] = [Math.max(high, pixels[at - 3]), Math.min(low, pixels[at - 3])];
        if (x < width - 1) [high, low] = [Math.max(high, pixels[at + 3]), Math.min(low, pixels[at + 3])];
        rowMax[at] = high;
        rowMin[at] = low;
      }
    }
  }
  const stride = width * 3;
  let flat = 0;
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1) {
      let widest = 0;
      let brightest = 0;
      for (let c = 0; c < 3; c += 1) {
        const at = (y * width + x) * 3 + c;
        let [high, low] = [rowMax[at], rowMin[at]];
        if (y > 0) [high, low] = [Math.max(high, rowMax[at - stride]), Math.min(low, rowMin[at - stride])];
        if (y < height - 1) [high, low] = [Math.max(high, rowMax[at + stride]), Math.min(low, rowMin[at + stride])];
        widest = Math.max(widest, high - low);
        brightest = Math.max(brightest, pixels[at]);
      }
      if (widest <= spread && brightest > darkest) flat += 1;
    }
  }
  return flat / (width * height);
}

/** busdet.ood.check_image: {score (null without statistics or features), reasons (none: in distribution)}. */
function checkImage(image, features, ood) {
  const reasons = [];
  const coloured = colourFraction(image.pixels, ood.colour_spread);
  if (coloured > ood.max_colour_fraction) reasons.push(formatPython(ood.colour_reason, coloured));
  const flat = flatFraction(image.pixels, image.width, image.height, ood.flat_spread, ood.flat_darkest);
  if (flat > ood.max_flat_fraction) reasons.push(formatPython(ood.flat_reason, flat));
  let score = null;
  if (ood.learned && features) {
    score = mahalanobisDistance(features, ood.learned);
    if (score > ood.learned.threshold) {
      reasons.unshift(formatPython(ood.learned_reason, score, ood.learned.threshold));
    }
  }
  return { score, reasons };
}

/** busdet.results.ImageResult.in_distribution: null for a file the model did not run on. */
function inDistribution(record) {
  return record.error || !record.check ? null : record.check.reasons.length === 0;
}

/** busdet.ood.ImageCheck.warning: '' for an image in distribution, else the sentence the user sees. */
function checkWarning(record, ood) {
  return inDistribution(record) === false ? formatPython(ood.warning_template, record.check.reasons.join('; ')) : '';
}

/** busdet.results.result_finding: the image-level sentence, never a lesion reading for a flagged image. */
function resultFinding(record, shown, ood) {
  return inDistribution(record) === false ? ood.untrusted_finding : imageFinding(shown)[0];
}

/** busdet.results.result_finding_line. */
function resultFindingLine(record, shown, ood) {
  return inDistribution(record) === false ? `${ood.untrusted_finding} (${shown.length} box(es) drawn)`
    : findingLine(shown);
}

/** A CSV cell of a Python bool (pandas' nullable boolean: empty for None). */
const pythonBool = (value) => (value === null ? null : value ? 'True' : 'False');

// ---------------------------------------------------------------- tables (busdet.tables)

function csvCell(value) {
  if (value === null || value === undefined) return '';
  const text = String(value);
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

/** predictions.csv rows of one record's shown boxes, most confident first. */
function predictionRows(record, threshold) {
  if (record.error) return [];
  return aboveThreshold(record.detections, threshold).map((box) => ({
    filename: record.filename, ...Object.fromEntries(['xmin', 'ymin', 'width', 'height'].map(
      (name, i) => [name, pixelXywh(box)[i]])),
    label: box.label, score: formatFloat(roundDigits(box.score, 4)), frame: null, width_mm: null, height_mm: null,
    in_distribution: pythonBool(inDistribution(record)),
  }));
}

/** predictions.csv bytes, exactly its columns (busdet.tables.PREDICTION_COLUMNS), "\n" line ends. */
function predictionsCsv(records, threshold, columns) {
  const rows = records.flatMap((record) => predictionRows(record, threshold));
  return [columns, ...rows.map((row) => columns.map((name) => row[name]))]
    .map((cells) => cells.map(csvCell).join(',')).join('\n') + '\n';
}

/** busdet.files.safe_stem: a file-name stem safe to offer for download. */
function safeStem(filename) {
  const name = filename.replaceAll('\\', '/').split('/').pop();
  const dot = name.lastIndexOf('.');
  const stem = dot > 0 ? name.slice(0, dot) : name;
  return stem.replace(/[^A-Za-z0-9._-]/g, '_').replace(/^\.+|\.+$/g, '') || 'image';
}

// ---------------------------------------------------------------- reading files (busdet.images)

class ImageReadError extends Error {}

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

function imageFormat(bytes) {
  if (PNG_SIGNATURE.every((byte, i) => bytes[i] === byte)) return 'PNG';
  if (bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return 'JPEG';
  if (bytes[0] === 0x42 && bytes[1] === 0x4d) return 'BMP';
  return null;
}

/** Refuses the PNGs the browser would read otherwise than busdet.images: animated, 16-bit. */
function checkPng(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 33) throw new ImageReadError('cannot decode image (truncated PNG)');
  if (bytes[24] === 16) {
    throw new ImageReadError('16-bit PNG: the browser would read it with other pixels than the command line; '
                             + 'use predict.py or make run for it');
  }
  for (let at = 8; at + 8 <= bytes.length;) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    if (type === 'IDAT') break;
    if (type === 'acTL' && at + 12 <= bytes.length && view.getUint32(at + 8) > 1) {
      throw new ImageReadError(`holds ${view.getUint32(at + 8)} frames (animated PNG); only single images `
                               + 'are read: save each one as its own file');
    }
    at += 12 + length;
  }
}

/**
 * Why the model cannot take an image of this size, or null (busdet.inference.find_shape_problem):
 * scaled to fit the input, a strip such as 5000x1 would be under 1 px across, which the graph's
 * resize refuses with an error from deep inside ONNX Runtime.
 */
function shapeProblem(height, width, config) {
  const [inputHeight, inputWidth] = config.input_size;
  const scale = Math.min(inputHeight / height, inputWidth / width);
  if (Math.min(height, width) * scale >= 1) return null;
  const values = { width, height, input_width: inputWidth, input_height: inputHeight };
  return config.too_elongated_text.replace(/\{(\w+)\}/g, (_, key) => String(values[key]));
}

/**
 * A file -> {width, height, pixels: RGB uint8 [H*W*3], canvas} as busdet.images.decode_image
 * reads it: EXIF orientation applied, no colour-profile conversion, transparency on black.
 */
async function decodeImage(file, maxPixels) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  if (!bytes.length) throw new ImageReadError('file is empty');
  const format = imageFormat(bytes);
  if (!format) throw new ImageReadError('not a PNG, JPEG or BMP image (TIFF and DICOM: use make run or predict.py)');
  if (format === 'PNG') checkPng(bytes);
  let bitmap;
  try {
    bitmap = await createImageBitmap(new Blob([bytes]), { colorSpaceConversion: 'none', premultiplyAlpha: 'none',
                                                           imageOrientation: 'from-image' });
  } catch (error) {
    throw new ImageReadError(`cannot decode image (damaged or truncated ${format})`);
  }
  const { width, height } = bitmap;
  if (width * height > maxPixels) {
    throw new ImageReadError(`image is larger than ${maxPixels.toLocaleString('en-US')} pixels`);
  }
  const canvas = document.createElement('canvas');
  Object.assign(canvas, { width, height });
  const context = canvas.getContext('2d', { willReadFrequently: true });
  context.fillStyle = '#000';
  context.fillRect(0, 0, width, height);
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = context.getImageData(0, 0, width, height).data;
  const pixels = new Uint8Array(width * height * 3);
  for (let source = 0, target = 0; source < rgba.length; source += 4, target += 3) {
    pixels[target] = rgba[source];
    pixels[target + 1] = rgba[source + 1];
    pixels[target + 2] = rgba[source + 2];
  }
  return { width, height, pixels, canvas };
}

// ---------------------------------------------------------------- drawing (busdet.drawing)

/** Line, font and text weight for an image of this size (busdet.drawing._style). */
function drawingStyle(width, height) {
  const shortSide = Math.min(width, height);
  const thickness = Math.max(2, roundHalfEven(shortSide / 250));
  return { thickness, fontScale: Math.max(0.45, shortSide / 700), weight: Math.max(1, Math.floor(thickness / 2)) };
}

const rgb = (colour) => `rgb(${colour.join(',')})`;

/** A filled tag whose bottom-left is (x, y), kept inside the image (busdet.drawing._draw_tag). */
function drawTag(context, text, x, y, colour, style, textColour) {
  const { width, height } = context.canvas;
  // OpenCV's Hershey simplex is about 22 px high (10 below the baseline) at scale 1.
  const textHeight = Math.round(22 * style.fontScale);
  const baseline = Math.round(10 * style.fontScale);
  context.font = `${style.weight > 1 ? 'bold ' : ''}${Math.round(28 * style.fontScale)}px sans-serif`;
  const textWidth = Math.ceil(context.measureText(text).width);
  const pad = Math.max(2, style.weight * 2);
  const left = Math.min(Math.max(x, 0), Math.max(0, width - textWidth - 2 * pad));
  let top = y - textHeight - baseline - 2 * pad;
  if (top < 0) top = Math.min(Math.max(0, y), Math.max(0, height - textHeight - baseline - 2 * pad));
  context.fillStyle = rgb(colour);
  context.fillRect(left, top, textWidth + 2 * pad, textHeight + baseline + 2 * pad);
  context.fillStyle = rgb(textColour);
  context.textBaseline = 'alphabetic';
  context.fillText(text, left + pad, top + pad + textHeight);
}

function copyCanvas(source) {
  const canvas = document.createElement('canvas');
  Object.assign(canvas, { width: source.width, height: source.height });
  canvas.getContext('2d').drawImage(source, 0, 0);
  return canvas;
}

/** busdet.drawing.draw_boxes: the image with its shown boxes, "label 0.91", and the caption
 * (or null) in the bottom-left corner, on a new canvas. */
function drawBoxes(source, boxes, config, caption = null) {
  const canvas = copyCanvas(source);
  const context = canvas.getContext('2d');
  const style = drawingStyle(canvas.width, canvas.height);
  // The most confident last, so that its outline and tag stay on top.
  for (const box of [...boxes].sort((a, b) => a.score - b.score)) {
    const colour = config.class_colours[box.label] ?? config.other_colour;
    const [left, top] = [roundHalfEven(box.xmin), roundHalfEven(box.ymin)];
    const [right, bottom] = [roundHalfEven(box.xmax) - 1, roundHalfEven(box.ymax) - 1];
    context.strokeStyle = rgb(colour);
    context.lineWidth = style.thickness;
    context.strokeRect(left + 0.5, top + 0.5, right - left, bottom - top);
    drawTag(context, `${box.label} ${box.score.toFixed(2)}`, left, top, colour, style, config.text_colour);
  }
  const notes = [caption, boxes.length ? null : config.no_lesion_text].filter(Boolean);
  if (notes.length) drawTag(context, notes.join(' | '), 0, canvas.height, [255, 255, 255], style, config.text_colour);
  return canvas;
}

// ---------------------------------------------------------------- the page

const $ = (id) => document.getElementById(id);

function element(tag, properties = {}, children = []) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children);
  return node;
}

/** The About texts' Markdown subset (paragraphs, "- " items, **bold**) as DOM nodes, never as HTML. */
function markdownNodes(text) {
  const inline = (line) => line.split(/\*\*(.+?)\*\*/).map((part, i) => (i % 2 ? element('strong', {}, [part]) : part));
  const nodes = [];
  let paragraph = [];
  let list = null;
  const flush = () => {
    if (paragraph.length) nodes.push(element('p', {}, inline(paragraph.join(' '))));
    paragraph = [];
  };
  for (const line of text.split('\n')) {
    if (line.startsWith('- ')) {
      flush();
      if (!list) nodes.push((list = element('ul')));
      list.append(element('li', {}, inline(line.slice(2))));
    } else {
      list = null;
      paragraph.push(line.trim());
    }
  }
  flush();
  return nodes;
}

function tableNode(node, header, rows, numeric = () => false) {
  node.replaceChildren(element('thead', {}, [element('tr', {}, header.map((name) => element('th', {}, [name])))]),
                       element('tbody', {}, rows.map((row) => element('tr', {}, row.map((cell, i) => element(
                         'td', { className: numeric(i) ? 'number' : '' }, [cell === null ? '' : String(cell)]))))));
  node.classList.add('table');
  return node;
}

function showAbout(config) {
  $('notice').textContent = config.notice;
  const about = config.about;
  $('about-text').replaceChildren(...[about.model, about.training_data, about.limits].flatMap(markdownNodes));
  const metrics = about.test_metrics;
  $('metrics-caption').textContent = metrics ? 'Test-split metrics (model card):' : 'Test metrics: see MODEL_CARD.md.';
  if (metrics) tableNode($('metrics'), ['metric', ...metrics.columns], metrics.rows, (i) => i > 0);
}

function setStatus(text, done = 0, total = 1, finished = false) {
  $('status-text').textContent = text;
  Object.assign($('progress'), { max: total, value: done });
  $('status').classList.toggle('done', finished);
}

/** Offers bytes made on click (a Blob URL: nothing goes over the network). */
function downloadLink(label, fileName, build) {
  const link = element('a', { href: '#', textContent: label });
  link.dataset.fileName = fileName;
  link.addEventListener('click', async (event) => {
    event.preventDefault();
    const url = URL.createObjectURL(await build());
    const anchor = element('a', { href: url, download: fileName });
    document.body.append(anchor);
    anchor.click();
    anchor.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  });
  return link;
}

const canvasPng = (canvas) => new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
const csvBlob = (text) => new Blob([text], { type: 'text/csv' });

class Page {
  constructor(config, session) {
    this.config = config;
    this.session = session;
    this.records = [];
    this.queue = [];
    this.modelRuns = 0;
    this.threshold = config.score_threshold;
    this.classes = Object.fromEntries(Object.entries(config.classes).map(([id, name]) => [Number(id), name]));
  }

  /** Runs the model on one file; a file that cannot be read gets its reason, the others go on. */
  async analyse(file) {
    const record = { filename: file.name, width: null, height: null, error: null, detections: [], seconds: null,
                     check: null };
    try {
      const image = await decodeImage(file, this.config.max_image_pixels);
      Object.assign(record, { width: image.width, height: image.height, canvas: image.canvas });
      const problem = shapeProblem(image.height, image.width, this.config);
      if (problem) throw new ImageReadError(problem);
      const input = new ort.Tensor('uint8', image.pixels, [1, image.height, image.width, 3]);
      const start = performance.now();
      const outputs = await this.session.run({ [MODEL_INPUT]: input });
      this.modelRuns += 1;
      record.seconds = (performance.now() - start) / 1000;
      const { detections, features } = readOutputs(outputs, image.width, image.height, this.classes);
      record.detections = detections;
      record.check = checkImage(image, features, this.config.ood);
    } catch (error) {
      record.error = error instanceof ImageReadError ? error.message : `model failed (${error.message || error})`;
    }
    return record;
  }

  /** Queues files; one worker runs them in order (the session runs one image at a time). */
  async add(files) {
    if (!files.length) return;
    const wasIdle = !this.queue.length;
    this.queue.push(...files);
    if (!wasIdle) return;
    document.body.dataset.state = 'busy';
    let done = 0;
    while (this.queue.length) {
      const total = done + this.queue.length;
      const file = this.queue[0];
      setStatus(`Analysing ${done + 1} of ${total}: ${file.name}`, done, total);
      this.records.push(await this.analyse(file));
      document.body.dataset.analysed = String(this.records.length);
      this.queue.shift();
      done += 1;
      this.renderLast();
    }
    setStatus(`${this.records.length} file(s) analysed, in this browser.`, 1, 1, true);
    document.body.dataset.state = 'idle';
  }

  setThreshold(value) {
    this.threshold = value;
    $('threshold').value = String(value);
    $('threshold-value').textContent = value.toFixed(4);
    this.render();
  }

  /** Everything again, at the current threshold (the model does not run). */
  render() {
    this.renderErrors();
    this.renderSummary();
    $('results').replaceChildren(...this.records.map((record, i) => (record.error ? '' : this.resultNode(record, i + 1))));
  }

  /** The record just analysed: only its own image is drawn, so a long batch stays fast. */
  renderLast() {
    const record = this.records.at(-1);
    this.renderErrors();
    this.renderSummary();
    if (!record.error) $('results').append(this.resultNode(record, this.records.length));
  }

  renderErrors() {
    const failed = this.records.filter((record) => record.error);
    $('errors').replaceChildren(...(failed.length ? [element('p', {
      textContent: 'These files could not be read and were skipped; the other files still run:' })] : []),
      ...failed.map((record) => element('div', { className: 'error', textContent: `${record.filename}: ${record.error}` })));
  }

  renderSummary() {
    if (!this.records.length) return;
    const columns = this.config.prediction_columns;
    const rows = this.records.map((record, i) => {
      const shown = aboveThreshold(record.detections, this.threshold);
      return [i + 1, record.filename, record.error ? '' : resultFinding(record, shown, this.config.ood),
              record.width, record.height,
              record.error ? null : shown.length, record.error ? 'error' : 'ok', record.error ?? ''];
    });
    $('summary').replaceChildren(
      tableNode(element('table', { id: 'summary-table' }), ['image', 'filename', 'finding', 'width', 'height', 'boxes',
                                                             'status', 'error'], rows, (i) => [0, 3, 4, 5].includes(i)),
      element('div', { className: 'downloads' }, [downloadLink('All boxes CSV', 'predictions.csv', () => csvBlob(
        predictionsCsv(this.records, this.threshold, columns)))]));
  }

  resultNode(record, number) {
    const shown = aboveThreshold(record.detections, this.threshold);
    const ood = this.config.ood;
    const flagged = inDistribution(record) === false;
    const annotated = drawBoxes(record.canvas, shown, this.config, flagged ? ood.untrusted_caption : null);
    const warning = checkWarning(record, ood);
    const original = copyCanvas(record.canvas);
    const stem = safeStem(record.filename);
    const columns = this.config.box_columns;
    const rows = predictionRows(record, this.threshold).map((row) => columns.map((name) => row[name]));
    const node = element('article', { className: 'result' }, [
      element('h2', { textContent: record.filename }),
      // As the Streamlit page's st.warning: the sentence capitalised, with a full stop.
      ...(warning ? [element('p', { className: 'warning', role: 'alert',
                                    textContent: `${warning[0].toUpperCase()}${warning.slice(1)}.` })] : []),
      element('p', { className: 'finding', textContent: resultFindingLine(record, shown, ood) }),
      element('p', { className: 'caption', textContent: `${shown.length} box(es) at threshold `
        + `${this.threshold.toFixed(4)}; inference ${record.seconds.toFixed(2)} s` }),
      element('div', { className: 'images' }, [
        element('figure', {}, [original, element('figcaption', { textContent: 'Original' })]),
        element('figure', {}, [annotated, element('figcaption', { textContent: 'Detections' })])]),
      tableNode(element('table', { className: 'boxes' }), columns, rows, (i) => i > 0),
      element('div', { className: 'downloads' }, [
        downloadLink('Annotated PNG', `${stem}_annotated.png`, () => canvasPng(annotated)),
        downloadLink('Boxes CSV', `${stem}_predictions.csv`, () => csvBlob(
          predictionsCsv([record], this.threshold, this.config.prediction_columns)))]),
    ]);
    node.dataset.image = String(number);
    return node;
  }
}

// ---------------------------------------------------------------- start-up

/** The model's bytes, with download progress. */
async function fetchModel(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  const total = Number(response.headers.get('Content-Length')) || 0;
  const reader = response.body.getReader();
  const chunks = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    setStatus(`Loading the detection model... ${(received / 1e6).toFixed(1)} MB`, received, total || received);
  }
  const bytes = new Uint8Array(received);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  return bytes;
}

async function loadSession(config) {
  ort.env.wasm.wasmPaths = new URL('vendor/', import.meta.url).href;
  // Threads need SharedArrayBuffer, which only a cross-origin-isolated page gets.
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  const start = performance.now();
  const bytes = await fetchModel(config.model_file);
  setStatus('Preparing the model...', 0, 0);
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'],
                                                             graphOptimizationLevel: 'all' });
  return { session, seconds: (performance.now() - start) / 1000 };
}

function wireInputs(page) {
  const slider = $('threshold');
  slider.addEventListener('input', () => page.setThreshold(Number(slider.value)));
  $('threshold-reset').addEventListener('click', () => page.setThreshold(page.config.score_threshold));
  $('files').addEventListener('change', (event) => {
    page.add([...event.target.files]);
    event.target.value = '';
  });
  const zone = $('drop-zone');
  zone.addEventListener('dragover', (event) => { event.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    zone.classList.remove('over');
    page.add([...event.dataTransfer.files]);
  });
  // A file dropped beside the zone must not make the browser navigate to it.
  window.addEventListener('dragover', (event) => event.preventDefault());
  window.addEventListener('drop', (event) => event.preventDefault());
  for (const id of ['files', 'threshold', 'threshold-reset']) $(id).disabled = false;
}

async function main() {
  document.body.dataset.state = 'loading';
  try {
    const config = await (await fetch(CONFIG_URL)).json();
    showAbout(config);
    const { session, seconds } = await loadSession(config);
    const page = new Page(config, session);
    page.setThreshold(config.score_threshold);
    const threads = ort.env.wasm.numThreads;
    $('runtime').textContent = `Model runtime: ${config.runtime}, ${threads} thread(s), in this browser; `
      + `loaded in ${seconds.toFixed(1)} s.`;
    wireInputs(page);
    setStatus('Model ready: choose or drop images.', 1, 1, true);
    // For automation (tests, benchmark): the records and how often the model ran; read-only use.
    window.busdet = { page, modelLoadSeconds: seconds, threads };
    document.body.dataset.state = 'idle';
  } catch (error) {
    setStatus(`The model could not be loaded: ${error.message || error}`, 0, 1, true);
    document.body.dataset.state = 'failed';
  }
}

main();
