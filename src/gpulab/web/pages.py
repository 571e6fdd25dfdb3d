"""The three pages: plain HTML, a little CSS, and fetch() against the JSON API. No external
assets, so the pages work on a machine without internet."""

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { background: #1f3b57; color: #fff; padding: 10px 24px; display: flex; gap: 24px;
         align-items: baseline; }
header a { color: #cfe3f5; text-decoration: none; } header a.here { color: #fff; font-weight: 600; }
header h1 { font-size: 18px; margin: 0 16px 0 0; }
main { max-width: 1100px; margin: 20px auto; padding: 0 20px; }
fieldset { border: 1px solid #ddd; border-radius: 6px; background: #fff; margin: 0 0 12px; }
label { display: inline-block; min-width: 130px; }
.row { display: flex; gap: 16px; flex-wrap: wrap; align-items: flex-start; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; }
.card img { max-width: 320px; max-height: 320px; display: block; }
.error { color: #b00020; } .muted { color: #666; font-size: 13px; }
progress { width: 320px; }
table { border-collapse: collapse; width: 100%; background: #fff; font-size: 14px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; }
#gallery img { width: 140px; height: 140px; object-fit: cover; border-radius: 4px; }
#result[src] { width: 320px; height: auto; }
button { padding: 6px 16px; font-size: 15px; }
"""

NAV = (("/", "Style"), ("/caption", "Captions"), ("/runs", "Runs and reports"))

COMMON_JS = """
async function api(path, options) {
  const r = await fetch(path, options);
  const body = await r.json().catch(() => ({error: r.statusText}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}
async function follow(id, onUpdate) {
  for (;;) {
    const job = await api('/api/jobs/' + id);
    onUpdate(job);
    if (['done', 'failed', 'cancelled'].includes(job.status)) return job;
    await new Promise(r => setTimeout(r, 300));
  }
}
"""


def _page(title: str, here: str, body: str, script: str) -> str:
    nav = "".join(
        f'<a href="{href}" class="{"here" if href == here else ""}">{name}</a>'
        for href, name in NAV
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gpulab · {title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{CSS}</style></head>
<body><header><h1>gpulab</h1>{nav}</header><main>{body}</main>
<script>{COMMON_JS}{script}</script></body></html>
"""


def style_page() -> str:
    body = """
<h2>Style transformation</h2>
<form id="style-form">
<fieldset><legend>Images</legend>
  <p><label for="content_name">Content photo</label>
     <select id="content_name" name="content_name"><option>china</option><option>flower</option></select>
     or upload <input type="file" id="content" name="content" accept="image/*"></p>
  <p><label for="style_name">Style image</label>
     <select id="style_name" name="style_name"><option>painting</option></select>
     or upload <input type="file" id="style" name="style" accept="image/*"></p>
</fieldset>
<fieldset><legend>Weights</legend>
  <p><label for="content_weight">Content weight</label>
     <input type="range" id="content_weight" name="content_weight" min="0" max="2" step="0.1" value="1">
     <output id="content_weight_value">1.0</output></p>
  <p><label for="style_weight">Style weight</label>
     <input type="range" id="style_weight" name="style_weight" min="0" max="10" step="0.5" value="5">
     <output id="style_weight_value">5.0</output></p>
</fieldset>
<fieldset><legend>Work</legend>
  <p><label for="mode">Mode</label>
     <select id="mode" name="mode"><option value="optimize">optimisation (Gatys)</option>
     <option value="model">trained network (Johnson)</option></select>
     <select id="model_run" name="model_run" hidden></select></p>
  <p><label for="size">Size (longer side)</label>
     <input type="number" id="size" name="size" min="64" max="1024" value="256">
     <label for="steps">Steps</label>
     <input type="number" id="steps" name="steps" min="1" max="2000" value="100"></p>
</fieldset>
<button id="submit" type="submit">Stylize</button>
<button id="cancel" type="button" disabled>Cancel</button>
</form>
<p><progress id="progress" max="1" value="0"></progress> <span id="status" class="muted"></span></p>
<div class="row" id="result-row">
  <div class="card"><div class="muted">content</div><img id="content-preview" alt="content"></div>
  <div class="card"><div class="muted">style</div><img id="style-preview" alt="style"></div>
  <div class="card"><div class="muted">result</div><img id="result" alt="result">
     <a id="download" download="stylized.png" hidden>Download</a></div>
</div>
<h3>Recent results</h3><div id="gallery" class="row"></div>
"""
    script = """
const form = document.getElementById('style-form');
for (const id of ['content_weight', 'style_weight']) {
  const input = document.getElementById(id), out = document.getElementById(id + '_value');
  input.addEventListener('input', () => out.textContent = Number(input.value).toFixed(1));
}
function preview(role) {
  const file = document.getElementById(role).files[0];
  document.getElementById(role + '-preview').src =
    file ? URL.createObjectURL(file) : '/api/embedded/' + document.getElementById(role + '_name').value;
}
for (const role of ['content', 'style']) {
  document.getElementById(role).addEventListener('change', () => preview(role));
  document.getElementById(role + '_name').addEventListener('change', () => preview(role));
  preview(role);
}
const mode = document.getElementById('mode'), runs = document.getElementById('model_run');
mode.addEventListener('change', async () => {
  runs.hidden = mode.value !== 'model';
  if (!runs.hidden && !runs.options.length) {
    const all = await api('/api/runs');
    for (const r of all.filter(r => r.workload === 'style' && r.mode !== 'optimize')) {
      runs.add(new Option(r.id + ' (' + r.device + ')', r.id));
    }
  }
});
let current = null;
document.getElementById('cancel').addEventListener('click', () => {
  if (current) api('/api/jobs/' + current, {method: 'DELETE'});
});
async function gallery() {
  const items = await api('/api/gallery');
  document.getElementById('gallery').innerHTML = items.map(i =>
    `<a href="${i.image}"><img src="${i.image}" title="content ${i.content_weight ?? ''} style ${i.style_weight ?? ''}"></a>`).join('');
}
form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const status = document.getElementById('status'), bar = document.getElementById('progress');
  status.className = 'muted';
  status.textContent = 'submitting';
  document.getElementById('download').hidden = true;
  try {
    const job = await api('/api/style', {method: 'POST', body: new FormData(form)});
    current = job.id;
    document.getElementById('cancel').disabled = false;
    const done = await follow(job.id, j => {
      bar.value = j.progress;
      status.textContent = j.status + (j.message ? ': ' + j.message : '');
    });
    document.getElementById('cancel').disabled = true;
    if (done.status === 'done') {
      const img = document.getElementById('result');
      img.src = done.result.image + '?t=' + Date.now();
      const link = document.getElementById('download');
      link.href = done.result.image;
      link.hidden = false;
      status.textContent = 'done in ' + (done.result.seconds ? done.result.seconds.toFixed(1) + ' s' : 'one pass') +
        (done.result.pretrained === false ? ' (VGG19 not pretrained: random weights)' : '');
      gallery();
    } else if (done.status === 'failed') {
      status.className = 'error';
      status.textContent = done.error;
    }
  } catch (e) {
    status.className = 'error';
    status.textContent = e.message;
  }
});
gallery();
"""
    return _page("style", "/", body, script)


def caption_page() -> str:
    body = """
<h2>Captions</h2>
<form id="caption-form">
<fieldset>
  <p><label for="run">Caption model</label><select id="run" name="run"></select></p>
  <p><label for="image">Images</label><input type="file" id="image" accept="image/*" multiple></p>
  <p><label for="beam">Beam width</label><input type="number" id="beam" name="beam" min="1" max="20" value="3"></p>
</fieldset>
<button id="submit" type="submit">Caption</button>
</form>
<p id="status" class="muted"></p>
<table id="captions"><thead><tr><th>image</th><th>caption</th><th>log-probability</th></tr></thead><tbody></tbody></table>
"""
    script = """
(async () => {
  const all = await api('/api/runs');
  const select = document.getElementById('run');
  for (const r of all.filter(r => r.workload === 'caption')) select.add(new Option(r.id + ' · ' + r.key_metric, r.id));
  if (!select.options.length) document.getElementById('status').textContent =
    'no caption model yet: train one with `gpulab train caption`';
})();
document.getElementById('caption-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const status = document.getElementById('status'), body = document.querySelector('#captions tbody');
  status.className = 'muted';
  for (const file of document.getElementById('image').files) {
    const data = new FormData();
    data.append('image', file);
    data.append('run', document.getElementById('run').value);
    data.append('beam', document.getElementById('beam').value);
    try {
      const job = await api('/api/caption', {method: 'POST', body: data});
      status.textContent = 'captioning ' + file.name;
      const done = await follow(job.id, () => {});
      const row = body.insertRow();
      row.insertCell().innerHTML = `<img src="${done.result ? done.result.image : ''}" height="64">`;
      row.insertCell().textContent = done.status === 'done' ? done.result.caption : done.error;
      row.insertCell().textContent = done.status === 'done' ? done.result.logprob.toFixed(3) : '';
      status.textContent = '';
    } catch (e) {
      status.className = 'error';
      status.textContent = file.name + ': ' + e.message;
    }
  }
});
"""
    return _page("captions", "/caption", body, script)


def runs_page() -> str:
    body = """
<h2>Latest bench report</h2><div id="report" class="muted">loading</div>
<h2>Runs</h2>
<table id="runs"><thead><tr><th>run</th><th>workload</th><th>device</th><th>created</th>
<th>status</th><th>samples/s</th><th>key metric</th><th>plots</th></tr></thead><tbody></tbody></table>
"""
    script = """
(async () => {
  const box = document.getElementById('report');
  try {
    const r = await api('/api/reports/latest');
    const rows = r.rows.map(x => `<tr><td>${x.workload}</td><td>${x.mode}</td><td>${x.device}</td>
      <td>${x.samples_per_s ? Math.round(x.samples_per_s.olympic_mean).toLocaleString() : 'failed'}</td>
      <td>${x.speedup_vs_cpu ? x.speedup_vs_cpu.speedup.toFixed(1) + 'x' : ''}</td></tr>`).join('');
    box.className = '';
    box.innerHTML = `<p>${r.created_utc} · ${r.mode} · <a href="${r.html}">full report</a></p>
      <table><thead><tr><th>workload</th><th>mode</th><th>device</th><th>samples/s</th><th>speedup vs CPU</th></tr></thead>
      <tbody>${rows}</tbody></table>` +
      (r.probe ? '<h3>Machine</h3><ul>' + r.probe.map(l => '<li>' + l + '</li>').join('') + '</ul>' : '');
  } catch (e) { box.textContent = e.message; }
  const body = document.querySelector('#runs tbody');
  for (const r of await api('/api/runs')) {
    const row = body.insertRow();
    for (const v of [r.id, r.workload, r.device, r.created_utc, r.status,
                     r.samples_per_s ? Math.round(r.samples_per_s).toLocaleString() : '', r.key_metric]) {
      row.insertCell().textContent = v;
    }
    row.insertCell().innerHTML = r.plots.map(p => `<a href="${p}">${p.split('/').pop()}</a>`).join(' ');
  }
})();
"""
    return _page("runs", "/runs", body, script)
