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
