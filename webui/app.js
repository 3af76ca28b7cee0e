// LLaMA Board (ferrotune webui): the page's behaviour. Plain JS, no build step, no dependencies.
// The form is built from FIELDS below; labels and help texts come from window.I18N (i18n.js); the server's
// /api/info says which LLaMA-Factory keys ferrotune implements, and the rest are shown disabled with the reason.
"use strict";

// Known models: picking one fills the model path and the template (LLaMA-Factory's registry, kept small).
const MODELS = {
  "SmolLM2-135M-Instruct-GGUF": { path: ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf", template: "smollm2" },
  "SmolLM2-135M-Instruct": { path: "HuggingFaceTB/SmolLM2-135M-Instruct", template: "smollm2" },
  "SmolLM2-360M-Instruct": { path: "HuggingFaceTB/SmolLM2-360M-Instruct", template: "smollm2" },
  "SmolLM2-1.7B-Instruct": { path: "HuggingFaceTB/SmolLM2-1.7B-Instruct", template: "smollm2" },
  "Qwen2.5-0.5B-Instruct": { path: "Qwen/Qwen2.5-0.5B-Instruct", template: "qwen" },
  "Qwen2.5-1.5B-Instruct": { path: "Qwen/Qwen2.5-1.5B-Instruct", template: "qwen" },
  "Llama-3.2-1B-Instruct": { path: "meta-llama/Llama-3.2-1B-Instruct", template: "llama3" },
  "Llama-3.2-3B-Instruct": { path: "meta-llama/Llama-3.2-3B-Instruct", template: "llama3" },
  "Mistral-7B-Instruct-v0.3": { path: "mistralai/Mistral-7B-Instruct-v0.3", template: "mistral" },
  "Custom": null,
};

const SCHEDULERS = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
  "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay"];
const OPTIMIZERS = ["adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adamw_8bit", "paged_adamw_8bit", "lion_32bit", "adagrad", "rmsprop"];
const STAGES = [["sft", "stage_sft"], ["rm", "stage_rm"], ["ppo", "stage_ppo"], ["dpo", "stage_dpo"], ["kto", "stage_kto"], ["pt", "stage_pt"]];
const STAGES_IMPLEMENTED = ["sft", "pt"];

function stamp() {
  const d = new Date(), p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}-${p(d.getHours())}-${p(d.getMinutes())}-${p(d.getSeconds())}`;
}

// Field: id (also the i18n key and the element id "f-<id>"), type, default, and where it goes.
// `support`: the LLaMA-Factory key whose ferrotune support decides whether the control is enabled.
const TOP = [
  { id: "lang", type: "select", options: () => window.LANGS.map((l) => [l, { en: "English", zh: "简体中文", ru: "Русский", ko: "한국어", ja: "日本語" }[l]]), def: "en", ui: true },
  { id: "model_name", type: "select", options: () => Object.keys(MODELS).map((m) => [m, m]), def: "SmolLM2-135M-Instruct-GGUF" },
  { id: "model_path", type: "text", def: MODELS["SmolLM2-135M-Instruct-GGUF"].path, wide: true },
  { id: "finetuning_type", type: "select", options: () => ["lora", "freeze", "full"].map((x) => [x, x]), def: "lora" },
  { id: "checkpoint_path", type: "multi", options: () => [], def: [], wide: true },
];
const ADVANCED = [
  { id: "quantization_bit", type: "select", options: () => [["none", "none"], ["8", "8"], ["4", "4"]], def: "none", support: "quantization_bit" },
  { id: "quantization_method", type: "select", options: () => ["bnb", "hqq", "eetq"].map((x) => [x, x]), def: "bnb", support: "quantization_method" },
  { id: "template", type: "select", options: () => [["", ""]].concat((INFO.templates || []).map((t) => [t, t])), def: "smollm2" },
  { id: "rope_scaling", type: "select", options: () => ["none", "linear", "dynamic"].map((x) => [x, x]), def: "none" },
  { id: "booster", type: "select", options: () => ["auto", "flashattn2", "unsloth", "liger_kernel"].map((x) => [x, x]), def: "auto" },
];
const TRAIN_MAIN = [
  [
    { id: "stage", type: "select", options: () => STAGES, def: "sft" },
    { id: "dataset_dir", type: "text", def: "data" },
    { id: "dataset", type: "multi", options: () => [], def: [], wide: true, button: "preview_dataset" },
  ],
  [
    { id: "learning_rate", type: "text", def: "5e-5", num: true },
    { id: "num_train_epochs", type: "text", def: "3.0", num: true },
    { id: "max_grad_norm", type: "text", def: "1.0", num: true },
    { id: "max_samples", type: "text", def: "100000", num: true },
    { id: "compute_type", type: "select", options: () => ["bf16", "fp16", "fp32", "pure_bf16"].map((x) => [x, x]), def: "bf16" },
  ],
  [
    { id: "cutoff_len", type: "number", def: 2048, min: 4, max: 131072 },
    { id: "batch_size", type: "number", def: 2, min: 1 },
    { id: "gradient_accumulation_steps", type: "number", def: 8, min: 1 },
    { id: "val_size", type: "number", def: 0, min: 0, step: 0.001 },
    { id: "lr_scheduler_type", type: "select", options: () => SCHEDULERS.map((x) => [x, x]), def: "cosine" },
  ],
];
const GROUPS = [
  { id: "extra_tab", fields: [
    { id: "logging_steps", type: "number", def: 5, min: 1 },
    { id: "save_steps", type: "number", def: 100, min: 1 },
    { id: "warmup_steps", type: "number", def: 0, min: 0 },
    { id: "neftune_alpha", type: "number", def: 0, min: 0, step: 0.1 },
    { id: "optim", type: "select", options: () => OPTIMIZERS.map((x) => [x, x]), def: "adamw_torch", support: "optim" },
    { id: "extra_args", type: "text", def: "{}", wide: true },
    { id: "packing", type: "check", def: false },
    { id: "neat_packing", type: "check", def: false },
    { id: "train_on_prompt", type: "check", def: false },
    { id: "mask_history", type: "check", def: false },
    { id: "resize_vocab", type: "check", def: false, support: "resize_vocab" },
    { id: "use_llama_pro", type: "check", def: false, support: "use_llama_pro" },
    { id: "enable_thinking", type: "check", def: true },
    { id: "report_to", type: "select", options: () => ["none", "wandb", "mlflow", "neptune", "tensorboard", "trackio", "all"].map((x) => [x, x]), def: "none", support: "report_to" },
  ] },
  { id: "freeze_tab", method: "freeze", fields: [
    { id: "freeze_trainable_layers", type: "number", def: 2, min: -128, max: 128 },
    { id: "freeze_trainable_modules", type: "text", def: "all" },
    { id: "freeze_extra_modules", type: "text", def: "" },
  ] },
  { id: "lora_tab", method: "lora", fields: [
    { id: "lora_rank", type: "number", def: 8, min: 1 },
    { id: "lora_alpha", type: "number", def: 16, min: 0 },
    { id: "lora_dropout", type: "number", def: 0, min: 0, max: 1, step: 0.01 },
    { id: "loraplus_lr_ratio", type: "number", def: 0, min: 0 },
    { id: "create_new_adapter", type: "check", def: false },
    { id: "use_rslora", type: "check", def: false },
    { id: "use_dora", type: "check", def: false, support: "use_dora" },
    { id: "use_pissa", type: "check", def: false, support: "pissa_init" },
    { id: "lora_target", type: "text", def: "" },
    { id: "additional_target", type: "text", def: "" },
  ] },
  { id: "rlhf_tab", reason: "rlhf_reason", fields: [
    { id: "pref_beta", type: "number", def: 0.1, step: 0.01 },
    { id: "pref_ftx", type: "number", def: 0, step: 0.01 },
    { id: "pref_loss", type: "select", options: () => ["sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo"].map((x) => [x, x]), def: "sigmoid" },
    { id: "reward_model", type: "text", def: "" },
    { id: "ppo_score_norm", type: "check", def: false },
    { id: "ppo_whiten_rewards", type: "check", def: false },
  ] },
  { id: "galore_tab", support: "use_galore", fields: [
    { id: "use_galore", type: "check", def: false },
    { id: "galore_rank", type: "number", def: 16 },
    { id: "galore_update_interval", type: "number", def: 200 },
    { id: "galore_scale", type: "number", def: 2.0, step: 0.1 },
    { id: "galore_target", type: "text", def: "all" },
  ] },
  { id: "badam_tab", support: "use_badam", fields: [
    { id: "use_badam", type: "check", def: false },
    { id: "badam_mode", type: "select", options: () => [["layer", "layer"], ["ratio", "ratio"]], def: "layer" },
    { id: "badam_switch_mode", type: "select", options: () => ["ascending", "descending", "random", "fixed"].map((x) => [x, x]), def: "ascending" },
    { id: "badam_switch_interval", type: "number", def: 50 },
    { id: "badam_update_ratio", type: "number", def: 0.05, step: 0.01 },
  ] },
];
// The Evaluate & Predict tab (LLaMA-Factory's eval.py); the model, adapters and template come from the top bar.
const EVAL_FIELDS = [
  [
    { id: "eval_dataset_dir", type: "text", def: "data" },
    { id: "eval_dataset", type: "multi", options: () => [], def: [], wide: true, button: "preview_dataset", buttonId: "eval-btn-preview_dataset" },
  ],
  [
    { id: "eval_cutoff_len", type: "number", def: 1024, min: 4, max: 131072 },
    { id: "eval_max_samples", type: "text", def: "100000", num: true },
    { id: "eval_batch_size", type: "number", def: 2, min: 1 },
    { id: "predict", type: "check", def: true },
  ],
  [
    { id: "eval_max_new_tokens", type: "number", def: 512, min: 8, max: 4096 },
    { id: "eval_top_p", type: "number", def: 0.7, min: 0.01, max: 1, step: 0.01 },
    { id: "eval_temperature", type: "number", def: 0.95, min: 0.01, max: 1.5, step: 0.01 },
    { id: "eval_output_dir", type: "text", def: () => `eval_${stamp()}`, wide: true },
  ],
];

// The two tabs whose Start runs `ferrotune train` in the server's one runner: their routes and element ids.
const RUN_PANES = {
  train: { prefix: "", preview: "/api/preview", start: "/api/start", dataset: "dataset", datasetDir: "dataset_dir" },
  eval: { prefix: "eval-", preview: "/api/eval/preview", start: "/api/eval/start", dataset: "eval_dataset", datasetDir: "eval_dataset_dir" },
};
// Each eval-pane element id is the train pane's with an "eval-" prefix.
const runEl = (kind, name) => $(`#${RUN_PANES[kind].prefix}${name}`);

const RUN_FIELDS = [
  { id: "output_dir", type: "text", def: () => `train_${stamp()}`, wide: true },
  { id: "config_path", type: "text", def: () => `${stamp()}.yaml` },
];

const CHAT_FIELDS = [
  { id: "system_prompt", type: "text", def: "", wide: true },
  { id: "max_new_tokens", type: "number", def: 512, min: 8, max: 8192 },
  { id: "top_p", type: "number", def: 0.7, min: 0.01, max: 1, step: 0.01 },
  { id: "temperature", type: "number", def: 0.95, min: 0, max: 1.5, step: 0.01 },
  { id: "query", type: "text", def: "", wide: true },
];

// The Export tab (LLaMA-Factory's export.py); the model, adapters and template come from the top bar.
const EXPORT_FIELDS = [
  { id: "export_size", type: "number", def: 5, min: 1, max: 100 },
  { id: "export_quantization_bit", type: "select", options: () => ["none", "8", "4", "3", "2"].map((x) => [x, x]), def: "none", support: "export_quantization_bit" },
  { id: "export_quantization_dataset", type: "text", def: "data/c4_demo.jsonl", support: "export_quantization_dataset" },
  { id: "export_device", type: "select", options: () => [["cpu", "cpu"], ["auto", "auto"]], def: "cpu", support: "export_device" },
  { id: "export_legacy_format", type: "check", def: false, support: "export_legacy_format" },
  { id: "infer_dtype", type: "select", options: () => ["auto", "float16", "bfloat16", "float32"].map((x) => [x, x]), def: "auto" },
  { id: "export_dir", type: "text", def: "", wide: true },
  { id: "export_hub_model_id", type: "text", def: "", support: "export_hub_model_id" },
];

let INFO = { templates: [], support: {} };
let LANG = "en";
const ALL_FIELDS = [];

const $ = (sel) => document.querySelector(sel);
function t(key, part = 0) {
  const entry = window.I18N[key];
  if (!entry) return key;
  const v = entry[LANG] || entry.en;
  return v[part] !== undefined ? v[part] : (entry.en[part] || "");
}

async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const data = await r.json().catch(() => ({ error: { message: `HTTP ${r.status}` } }));
  if (!r.ok) throw new Error((data.error && data.error.message) || `HTTP ${r.status}`);
  return data;
}

// Why a control is disabled, from the server's support table; null when ferrotune implements it.
function supportReason(key) {
  const s = INFO.support[key];
  if (!s) return null;
  if (s.status === "not_yet") return { kind: "not_in_ferrotune", text: s.reason };
  if (s.status === "noop") return { kind: "no_effect", text: s.reason };
  return null;
}

function makeField(f, groupDisabled) {
  const wrap = document.createElement("div");
  wrap.className = "field" + (f.type === "check" ? " check" : "") + (f.wide ? " wide" : "");
  wrap.dataset.field = f.id;
  let input;
  if (f.type === "select" || f.type === "multi") {
    input = document.createElement("select");
    if (f.type === "multi") input.multiple = true;
  } else {
    input = document.createElement("input");
    input.type = f.type === "check" ? "checkbox" : f.type === "number" ? "number" : "text";
    if (f.min !== undefined) input.min = f.min;
    if (f.max !== undefined) input.max = f.max;
    if (f.step !== undefined) input.step = f.step;
  }
  input.id = `f-${f.id}`;
  const label = document.createElement("label");
  label.htmlFor = input.id;
  const span = document.createElement("span");
  span.dataset.i18n = f.id;
  if (f.type === "check") {
    label.append(input, span);
    wrap.append(label);
  } else {
    label.append(span);
    wrap.append(label, input);
  }
  if (f.button) {
    const b = document.createElement("button");
    b.id = f.buttonId || `btn-${f.button}`;
    b.dataset.i18n = f.button;
    b.type = "button";
    wrap.append(b);
  }
  const help = document.createElement("div");
  help.className = "help";
  help.dataset.i18nHelp = f.id;
  wrap.append(help);
  // Disabled: a whole group ferrotune lacks (reason given once on the group), or this key is not implemented
  // (not_yet) / only read with a key ferrotune rejects (a no-op whose value would be ignored).
  const why = supportReason(f.support || "");
  if (groupDisabled || why) {
    input.disabled = true;
    wrap.classList.add("disabled");
    if (why && !groupDisabled) {
      const r = document.createElement("div");
      r.className = "reason";
      r.dataset.reasonKind = why.kind;
      r.dataset.reasonText = why.text;
      wrap.append(r);
    }
  }
  f.el = input;
  ALL_FIELDS.push(f);
  return wrap;
}

function fillOptions(f, pairs) {
  const sel = f.el;
  const keep = f.type === "multi" ? Array.from(sel.selectedOptions).map((o) => o.value) : sel.value;
  sel.innerHTML = "";
  const s = INFO.support[f.support || ""];
  for (const [value, labelOrKey] of pairs) {
    const o = document.createElement("option");
    o.value = value;
    if (window.I18N[labelOrKey]) o.dataset.i18n = labelOrKey; else o.textContent = labelOrKey;
    // Values ferrotune does not implement stay visible, disabled, with the reason.
    if (f.id === "stage" && !STAGES_IMPLEMENTED.includes(value)) {
      o.disabled = true;
      o.dataset.suffix = "stage_not_yet";
    } else if (s && s.status === "values" && !s.allowed.includes(value)) {
      o.disabled = true;
      o.title = s.reason;
      o.dataset.suffixText = s.reason;
    }
    sel.append(o);
  }
  if (f.type === "multi") {
    for (const o of sel.options) o.selected = keep.includes(o.value);
  } else if (pairs.some(([v]) => v === keep)) {
    sel.value = keep;
  }
}

function setValue(f, v) {
  if (f.type === "check") f.el.checked = !!v;
  else if (f.type === "multi") {
    const vals = Array.isArray(v) ? v.map(String) : [];
    for (const o of f.el.options) o.selected = vals.includes(o.value);
    f.pending = vals; // options may arrive later (datasets, checkpoints)
  } else f.el.value = v === null || v === undefined ? "" : String(v);
}

// A loaded selection whose options had not arrived yet: applied once they have, then forgotten (the user's
// own choices since are kept by fillOptions).
function applyPending(f) {
  if (!f.pending) return;
  for (const o of f.el.options) o.selected = f.pending.includes(o.value);
  f.pending = null;
}

function getValue(f) {
  if (f.type === "check") return f.el.checked;
  if (f.type === "multi") return Array.from(f.el.selectedOptions).map((o) => o.value);
  if (f.type === "number") return f.el.value === "" ? null : Number(f.el.value);
  return f.el.value;
}

const field = (id) => ALL_FIELDS.find((f) => f.id === id);
const val = (id) => getValue(field(id));

function applyLang(lang) {
  LANG = window.LANGS.includes(lang) ? lang : "en";
  document.documentElement.lang = LANG;
  for (const el of document.querySelectorAll("[data-i18n]")) {
    let text = t(el.dataset.i18n);
    if (el.dataset.suffix) text += ` (${t(el.dataset.suffix)})`;
    el.textContent = text;
  }
  for (const el of document.querySelectorAll("option[data-suffix-text]")) {
    el.textContent = `${el.value} (${t("not_in_ferrotune")} ${el.dataset.suffixText})`;
  }
  for (const el of document.querySelectorAll("[data-i18n-help]")) el.textContent = t(el.dataset.i18nHelp, 1);
  for (const el of document.querySelectorAll("[data-reason-kind]")) el.textContent = `${t(el.dataset.reasonKind)} ${el.dataset.reasonText}`;
  for (const el of document.querySelectorAll("[data-group-reason]")) {
    const r = el.dataset.groupReason;
    el.textContent = window.I18N[r] ? t(r) : `${t("not_in_ferrotune")} ${r}`;
  }
  document.title = t("title");
  renderLoss(lastLoss);
}

function buildForm() {
  const top = $("#top");
  const row1 = document.createElement("div");
  row1.className = "row";
  for (const f of TOP) row1.append(makeField(f));
  const ref = document.createElement("button");
  ref.id = "btn-refresh";
  ref.type = "button";
  ref.dataset.i18n = "refresh";
  row1.querySelector('[data-field="checkpoint_path"]').append(ref);
  top.append(row1);
  const adv = document.createElement("details");
  adv.id = "advanced";
  const sum = document.createElement("summary");
  sum.dataset.i18n = "advanced";
  adv.append(sum);
  const row2 = document.createElement("div");
  row2.className = "row";
  for (const f of ADVANCED) row2.append(makeField(f));
  adv.append(row2);
  top.append(adv);

  for (const [rows, target] of [[TRAIN_MAIN, "#train-form"], [EVAL_FIELDS, "#eval-form"]]) {
    for (const rowFields of rows) {
      const row = document.createElement("div");
      row.className = "row";
      for (const f of rowFields) row.append(makeField(f));
      $(target).append(row);
    }
  }
  const form = $("#train-form");
  for (const g of GROUPS) {
    const d = document.createElement("details");
    d.id = `group-${g.id}`;
    const s = document.createElement("summary");
    s.dataset.i18n = g.id;
    d.append(s);
    const why = g.reason || (g.support && supportReason(g.support) ? supportReason(g.support).text : null);
    if (why) {
      const r = document.createElement("div");
      r.className = "group-reason";
      r.dataset.groupReason = why;
      d.append(r);
    }
    const row = document.createElement("div");
    row.className = "row";
    for (const f of g.fields) {
      f.method = g.method;
      row.append(makeField(f, !!why));
    }
    d.append(row);
    form.append(d);
  }
  for (const [fields, target] of [[CHAT_FIELDS, "#chat-fields"], [EXPORT_FIELDS, "#export-fields"]]) {
    const row = document.createElement("div");
    row.className = "row";
    for (const f of fields) {
      f.ui = true; // not part of a training run's saved form
      row.append(makeField(f));
    }
    $(target).append(row);
  }
  const run = $("#run-fields");
  const row = document.createElement("div");
  row.className = "row";
  for (const f of RUN_FIELDS) row.append(makeField(f));
  run.append(row);

  for (const f of ALL_FIELDS) {
    if (f.options) fillOptions(f, f.options());
    setValue(f, typeof f.def === "function" ? f.def() : f.def);
  }
}

// The top bar's model name as it appears in saves/<model name>/.
const savesModelName = () => (val("model_name") === "Custom" ? "custom" : val("model_name"));

// The model, adapters and template the top bar names (shared by training, evaluation and chat).
function modelArgs() {
  const args = [];
  const ft = val("finetuning_type");
  const ckpts = val("checkpoint_path");
  const root = `saves/${savesModelName()}/${ft}`;
  args.push(["model_name_or_path", ft !== "lora" && ckpts.length ? `${root}/${ckpts[0]}` : val("model_path").trim()]);
  if (ft === "lora" && ckpts.length) args.push(["adapter_name_or_path", ckpts.map((c) => `${root}/${c}`).join(",")]);
  args.push(["template", val("template")]);
  if (val("rope_scaling") !== "none") args.push(["rope_scaling", val("rope_scaling")]);
  args.push(["finetuning_type", ft]);
  return args;
}

// The top bar's booster as LLaMA-Factory's keys.
function boosterArgs() {
  const booster = val("booster");
  if (booster === "flashattn2") return [["flash_attn", "fa2"]];
  if (booster === "unsloth") return [["use_unsloth", true]];
  if (booster === "liger_kernel") return [["enable_liger_kernel", true]];
  return [];
}

// A text field's value as a number, or an error naming the field.
function num(id) {
  const raw = String(val(id)).trim();
  const x = Number(raw);
  if (raw === "" || !Number.isFinite(x)) throw new Error(`${t(id)}: ${JSON.stringify(raw)} is not a number`);
  return x;
}

// ---- arguments (LLaMA-Factory names) from the form
function collectArgs() {
  const args = modelArgs().filter(([k]) => k !== "finetuning_type").concat(boosterArgs());
  const put = (k, v) => args.push([k, v]);
  const ft = val("finetuning_type");
  put("stage", val("stage"));
  put("finetuning_type", ft);
  put("dataset_dir", val("dataset_dir"));
  put("dataset", val("dataset").join(","));
  put("cutoff_len", val("cutoff_len"));
  put("learning_rate", num("learning_rate"));
  put("num_train_epochs", num("num_train_epochs"));
  put("max_samples", num("max_samples"));
  put("per_device_train_batch_size", val("batch_size"));
  put("gradient_accumulation_steps", val("gradient_accumulation_steps"));
  put("lr_scheduler_type", val("lr_scheduler_type"));
  put("max_grad_norm", num("max_grad_norm"));
  put("logging_steps", val("logging_steps"));
  put("save_steps", val("save_steps"));
  put("warmup_steps", val("warmup_steps"));
  if (val("neftune_alpha") > 0) put("neftune_noise_alpha", val("neftune_alpha"));
  put("optim", val("optim"));
  for (const k of ["packing", "neat_packing", "train_on_prompt", "mask_history"]) if (val(k)) put(k, true);
  if (!val("enable_thinking")) put("enable_thinking", false);
  put("report_to", val("report_to"));
  const ct = val("compute_type");
  if (ct === "bf16") put("bf16", true);
  if (ct === "fp16") put("fp16", true);
  if (ct === "pure_bf16") put("pure_bf16", true);
  if (ft === "freeze") {
    put("freeze_trainable_layers", val("freeze_trainable_layers"));
    put("freeze_trainable_modules", val("freeze_trainable_modules"));
    put("freeze_extra_modules", val("freeze_extra_modules"));
  }
  if (ft === "lora") {
    put("lora_rank", val("lora_rank"));
    put("lora_alpha", val("lora_alpha"));
    put("lora_dropout", val("lora_dropout"));
    if (val("loraplus_lr_ratio") > 0) put("loraplus_lr_ratio", val("loraplus_lr_ratio"));
    if (val("create_new_adapter")) put("create_new_adapter", true);
    if (val("use_rslora")) put("use_rslora", true);
    put("lora_target", val("lora_target").trim() || "all");
    put("additional_target", val("additional_target"));
  }
  put("val_size", val("val_size") || 0);
  put("output_dir", val("output_dir").trim());
  let extra;
  try {
    extra = JSON.parse(val("extra_args") || "{}");
  } catch (e) {
    throw new Error(`${t("msg_bad_extra")} ${e.message}`);
  }
  if (extra === null || typeof extra !== "object" || Array.isArray(extra)) throw new Error(t("msg_bad_extra"));
  for (const [k, v] of Object.entries(extra)) put(k, v);
  return { model_name: savesModelName(), args };
}

// The Evaluate & Predict tab's arguments; the server adds what LLaMA-Factory forces (stage sft,
// predict_with_generate, do_predict or do_eval from `predict`, the output dir under saves/).
function evalArgs() {
  const args = modelArgs().concat(boosterArgs());
  const put = (k, v) => args.push([k, v]);
  put("dataset_dir", val("eval_dataset_dir"));
  put("eval_dataset", val("eval_dataset").join(","));
  put("cutoff_len", val("eval_cutoff_len"));
  put("max_samples", num("eval_max_samples"));
  put("per_device_eval_batch_size", val("eval_batch_size"));
  put("predict", val("predict"));
  put("max_new_tokens", val("eval_max_new_tokens"));
  put("top_p", val("eval_top_p"));
  put("temperature", val("eval_temperature"));
  put("output_dir", val("eval_output_dir").trim());
  return { model_name: savesModelName(), args };
}

const runArgs = (kind) => (kind === "eval" ? evalArgs() : collectArgs());

function formState() {
  const state = {};
  for (const f of ALL_FIELDS) if (!f.ui) state[f.id] = getValue(f);
  return state;
}

function say(text, kind = "train") {
  runEl(kind, "output-box").textContent = text;
}

// ---- actions
// The dataset list of a tab: pairwise (ranking) datasets for the pairwise stages, the others for sft / pt and
// for evaluation (which is sft).
async function refreshDatasets(kind = "train") {
  const pane = RUN_PANES[kind];
  const f = field(pane.dataset);
  try {
    const r = await api("POST", "/api/datasets", { dataset_dir: val(pane.datasetDir) });
    const pairwise = kind === "train" && !["sft", "pt"].includes(val("stage"));
    fillOptions(f, r.datasets.filter((d) => d.ranking === pairwise).map((d) => [d.name, d.name]));
    applyPending(f);
  } catch (e) {
    fillOptions(f, []);
    say(`${t("msg_no_datasets")} ${e.message}`, kind);
  }
  applyLang(LANG);
}

async function refreshCheckpoints() {
  const f = field("checkpoint_path");
  try {
    const r = await api("POST", "/api/checkpoints", { model_name: savesModelName(), finetuning_type: val("finetuning_type") });
    fillOptions(f, r.checkpoints.map((c) => [c, c]));
    applyPending(f);
  } catch (e) {
    say(`${t("msg_error")} ${e.message}`);
  }
}

function showMethodGroups() {
  const ft = val("finetuning_type");
  for (const g of GROUPS) if (g.method) $(`#group-${g.id}`).hidden = g.method !== ft;
}

async function preview(kind) {
  try {
    const r = await api("POST", RUN_PANES[kind].preview, runArgs(kind));
    let text = r.ok ? `${t("msg_preview_ok")}\n\n${r.command}\n\n${r.yaml}` : `${t("msg_preview_err")}\n${r.error}\n\n${r.yaml}`;
    if (r.notes && r.notes.length) text += `\n${r.notes.map((n) => `note: ${n}`).join("\n")}\n`;
    if (r.output.action === "resume") text += `\n${t("msg_resume")} ${r.output.checkpoint}`;
    if (r.output.action === "refuse") text += `\n${t("msg_refuse")} ${r.output.message}`;
    say(text, kind);
    runEl(kind, "output-box").dataset.previewOk = String(r.ok);
  } catch (e) {
    say(`${t("msg_error")} ${e.message}`, kind);
  }
}

async function saveArgs() {
  try {
    const r = await api("POST", "/api/save_args", { config_path: val("config_path"), form: formState() });
    say(`${t("msg_saved")} ${r.path}`);
  } catch (e) {
    say(`${t("msg_error")} ${e.message}`);
  }
}

// Put a saved form's values into the page (every field but the ones named in `keep`).
async function applyForm(form, keep) {
  for (const [k, v] of Object.entries(form)) {
    const f = field(k);
    if (f && !f.el.disabled && !keep.includes(k)) setValue(f, v);
  }
  showMethodGroups();
  await refreshDatasets("train");
  await refreshDatasets("eval");
  await refreshCheckpoints();
}

async function loadArgs() {
  try {
    const r = await api("POST", "/api/load_args", { config_path: val("config_path") });
    await applyForm(r.form, ["config_path"]);
    say(`${t("msg_loaded")} ${r.path}`);
  } catch (e) {
    say(`${t("msg_error")} ${e.message}`);
  }
}

// An output dir that already holds a run: show what Start will do there and load the form that started it.
async function checkOutputDir() {
  try {
    const r = await api("POST", "/api/output_dir", {
      model_name: savesModelName(), finetuning_type: val("finetuning_type"), output_dir: val("output_dir"),
    });
    if (!r.exists) return;
    if (r.form) await applyForm(r.form, ["config_path", "output_dir", "lang"]);
    say(r.message, "train");
  } catch (e) {
    say(`${t("msg_error")} ${e.message}`, "train");
  }
}

let polling = null;
let runMessage = "";
async function start(kind) {
  try {
    const body = runArgs(kind);
    body.form = formState();
    const r = await api("POST", RUN_PANES[kind].start, body);
    runMessage = r.message;
    say(r.message, kind);
    setRunning(true, kind);
    poll();
  } catch (e) {
    say(`${t("msg_error")} ${e.message}`, kind);
  }
}

async function abort(kind) {
  try {
    await api("POST", "/api/abort", {});
    runMessage = t(kind === "eval" ? "msg_eval_aborting" : "msg_aborting");
  } catch (e) {
    say(`${t("msg_error")} ${e.message}`, kind);
  }
}

// One run at a time (the server has one runner): both tabs' Start wait for it; Abort is the running tab's.
function setRunning(on, kind) {
  for (const k of Object.keys(RUN_PANES)) {
    runEl(k, "btn-start").disabled = on;
    runEl(k, "btn-abort").disabled = !(on && k === kind);
  }
  if (on && !polling) polling = setInterval(poll, 1000);
  if (!on && polling) {
    clearInterval(polling);
    polling = null;
  }
}

let lastLoss = null;
async function poll() {
  let s;
  try {
    s = await api("GET", "/api/status");
  } catch (e) {
    return;
  }
  if (s.state === "idle") return;
  const kind = s.kind === "eval" ? "eval" : "train";
  const running = s.state === "running" || s.state === "aborting";
  setRunning(running, kind);
  if (s.progress) {
    runEl(kind, "progress-wrap").hidden = false;
    runEl(kind, "progress-bar").style.width = `${Math.min(100, s.progress.percentage)}%`;
    runEl(kind, "progress-label").textContent = s.progress.label;
    runEl(kind, "progress-wrap").dataset.percentage = String(s.progress.percentage);
  }
  const evalRun = kind === "eval";
  let head = runMessage;
  if (s.state === "aborting") head = t(evalRun ? "msg_eval_aborting" : "msg_aborting");
  if (s.state === "done") {
    if (s.outcome === "finished") head = t("msg_finished");
    else if (s.outcome === "aborted") head = t(evalRun ? "msg_eval_aborted" : "msg_aborted");
    else head = `${t("msg_failed")} ${s.outcome}`;
  }
  // A finished evaluation leads with its scores (all_results.json), as LLaMA-Factory's runner shows them.
  const results = evalRun && s.results ? `${t("msg_results")}\n${JSON.stringify(s.results, null, 4)}\n\n` : "";
  const box = runEl(kind, "output-box");
  box.dataset.state = s.outcome || s.state;
  say(`${head}\n${s.output_dir}\n\n${results}${s.log}`, kind);
  box.scrollTop = results ? 0 : box.scrollHeight;
  if (!evalRun) {
    lastLoss = s.loss;
    renderLoss(s.loss);
  }
}

// The loss plot: raw points faint, LLaMA-Factory's smoothed curve strong, step on x.
function renderLoss(loss) {
  const c = $("#loss-plot");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const n = loss && loss.raw ? loss.raw.length : 0;
  c.dataset.points = String(n);
  const L = 56, R = 14, T = 28, B = 36, W = c.width - L - R, H = c.height - T - B;
  g.strokeStyle = "#d0d7de";
  g.strokeRect(L, T, W, H);
  g.fillStyle = "#59636e";
  g.font = "12px sans-serif";
  g.fillText(t("step"), L + W / 2 - 12, c.height - 8);
  if (!n) return;
  const xs = loss.steps, all = loss.raw.concat(loss.smoothed);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  let y0 = Math.min(...all), y1 = Math.max(...all);
  if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
  const px = (x) => L + ((x - x0) / (x1 - x0)) * W;
  const py = (y) => T + (1 - (y - y0) / (y1 - y0)) * H;
  g.fillText(y1.toFixed(3), 4, T + 4);
  g.fillText(y0.toFixed(3), 4, T + H);
  g.fillText(String(x0), L, T + H + 14);
  g.fillText(String(x1), L + W - 20, T + H + 14);
  const line = (ys, color, width) => {
    g.strokeStyle = color;
    g.lineWidth = width;
    g.beginPath();
    ys.forEach((y, i) => (i ? g.lineTo(px(xs[i]), py(y)) : g.moveTo(px(xs[i]), py(y))));
    g.stroke();
    if (n === 1) { g.fillStyle = color; g.fillRect(px(xs[0]) - 2, py(ys[0]) - 2, 4, 4); }
  };
  line(loss.raw, "rgba(232,89,12,0.35)", 1.5);
  line(loss.smoothed, "#e8590c", 2.5);
  g.lineWidth = 1;
  g.fillStyle = "rgba(232,89,12,0.5)";
  g.fillRect(L + 8, 10, 14, 3);
  g.fillStyle = "#1f2328";
  g.fillText(t("loss_raw"), L + 26, 15);
  g.fillStyle = "#e8590c";
  g.fillRect(L + 100, 10, 14, 3);
  g.fillStyle = "#1f2328";
  g.fillText(t("loss_smoothed"), L + 118, 15);
}

// ---- dataset preview (a paged viewer, 2 records per page, as LLaMA-Factory's), of the Train or the Eval tab's pick
let previewOffset = 0;
let previewKind = "train";
async function previewDataset(delta) {
  const pane = RUN_PANES[previewKind];
  const ds = val(pane.dataset);
  if (!ds.length) { say(t("msg_pick_dataset"), previewKind); return; }
  previewOffset = Math.max(0, previewOffset + delta);
  try {
    const r = await api("POST", "/api/dataset_preview", { dataset_dir: val(pane.datasetDir), dataset: ds[0], offset: previewOffset, limit: 2 });
    $("#preview-title").textContent = `${ds[0]}: ${r.total} ${t("msg_records")}`;
    $("#preview-rows").textContent = JSON.stringify(r.rows, null, 2);
    $("#preview-page").textContent = `${previewOffset + 1}-${Math.min(previewOffset + 2, r.total)} / ${r.total}`;
    $("#preview-prev").disabled = previewOffset === 0;
    $("#preview-next").disabled = previewOffset + 2 >= r.total;
    if (!$("#preview-dialog").open) $("#preview-dialog").showModal();
  } catch (e) {
    say(`${t("msg_error")} ${e.message}`, previewKind);
  }
}

// ---- chat tab
let chatHistory = [];
function renderChat(pending) {
  const log = $("#chat-log");
  log.innerHTML = "";
  for (const m of pending ? chatHistory.concat([pending]) : chatHistory) {
    const d = document.createElement("div");
    d.className = `msg ${m.role}`;
    d.textContent = m.content;
    log.append(d);
  }
  log.dataset.turns = String(chatHistory.length);
  log.scrollTop = log.scrollHeight;
}

async function chatLoad() {
  $("#chat-info").textContent = t("msg_loading");
  $("#btn-chat-load").disabled = true;
  try {
    const r = await api("POST", "/api/chat/load", { args: modelArgs() });
    $("#chat-info").textContent = r.summary;
    $("#chat-box").hidden = false;
    $("#btn-chat-unload").disabled = false;
  } catch (e) {
    $("#chat-info").textContent = `${t("msg_error")} ${e.message}`;
    $("#btn-chat-load").disabled = false;
  }
}

async function chatUnload() {
  try {
    await api("POST", "/api/chat/unload", {});
    $("#chat-info").textContent = t("msg_unloaded");
  } catch (e) {
    $("#chat-info").textContent = `${t("msg_error")} ${e.message}`;
  }
  $("#chat-box").hidden = true;
  $("#btn-chat-unload").disabled = true;
  $("#btn-chat-load").disabled = false;
}

// Sends the conversation, streams the answer in (server-sent events over a POST), keeps it in the history.
async function chatSubmit() {
  const query = val("query").trim();
  if (!query) return;
  const button = $("#btn-chat-submit");
  button.disabled = true;
  chatHistory.push({ role: "user", content: query });
  const answer = { role: "assistant", content: "" };
  renderChat(answer);
  let error = null, finish = null;
  try {
    const r = await fetch("/api/chat", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ messages: chatHistory, system: val("system_prompt"), temperature: val("temperature"), top_p: val("top_p"), max_new_tokens: val("max_new_tokens") }),
    });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || `HTTP ${r.status}`);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).replace(/^data: /, "");
        buffer = buffer.slice(cut + 2);
        const ev = JSON.parse(line);
        if (ev.text) answer.content += ev.text;
        if (ev.error) error = ev.error;
        if (ev.done) finish = ev.done;
        renderChat(answer);
      }
    }
  } catch (e) {
    error = e.message;
  }
  if (error || !finish) {
    chatHistory.pop(); // the question goes back to the input box; the history stays alternating
    renderChat();
    $("#chat-info").textContent = `${t("msg_error")} ${error || "the answer stream ended early"}`;
  } else {
    chatHistory.push(answer);
    setValue(field("query"), "");
    renderChat();
    $("#chat-log").dataset.finish = finish;
  }
  button.disabled = false;
}

// ---- export tab
// The top bar's model and adapters plus the tab's fields; keys whose controls are disabled (not in ferrotune, or
// no effect) are left out, as the server would refuse or ignore them.
function exportArgs() {
  const args = modelArgs();
  args.push(["export_dir", val("export_dir").trim()]);
  args.push(["export_size", val("export_size")]);
  args.push(["infer_dtype", val("infer_dtype")]);
  for (const f of EXPORT_FIELDS) {
    if (!f.support || f.el.disabled) continue;
    const v = getValue(f);
    if (v !== "none" && v !== "" && v !== false) args.push([f.id, v]);
  }
  return args;
}

async function exportModel() {
  const info = $("#export-info"), button = $("#btn-export");
  button.disabled = true;
  info.dataset.state = "running";
  info.textContent = t("msg_exporting");
  try {
    const r = await api("POST", "/api/export", { args: exportArgs() });
    info.textContent = `${t("msg_exported")} ${r.export_dir}\n\n${r.log}`;
    info.dataset.state = "done";
  } catch (e) {
    info.textContent = `${t("msg_error")} ${e.message}`;
    info.dataset.state = "error";
  }
  button.disabled = false;
}

async function main() {
  try {
    INFO = await api("GET", "/api/info");
  } catch (e) {
    say(`${t("msg_error")} ${e.message}`);
  }
  $("#version").textContent = INFO.version ? `ferrotune ${INFO.version} · ${INFO.workdir}` : "";
  buildForm();
  const saved = localStorage.getItem("ferrotune.webui.lang");
  setValue(field("lang"), saved || "en");
  applyLang(saved || "en");
  say(t("msg_idle"));

  field("lang").el.addEventListener("change", (e) => {
    localStorage.setItem("ferrotune.webui.lang", e.target.value);
    applyLang(e.target.value);
  });
  field("model_name").el.addEventListener("change", (e) => {
    const m = MODELS[e.target.value];
    if (m) {
      setValue(field("model_path"), m.path);
      setValue(field("template"), m.template);
    }
    refreshCheckpoints();
  });
  field("finetuning_type").el.addEventListener("change", () => { showMethodGroups(); refreshCheckpoints(); });
  field("dataset_dir").el.addEventListener("change", () => refreshDatasets("train"));
  field("output_dir").el.addEventListener("change", checkOutputDir);
  field("stage").el.addEventListener("change", () => refreshDatasets("train"));
  field("eval_dataset_dir").el.addEventListener("change", () => refreshDatasets("eval"));
  $("#btn-refresh").addEventListener("click", refreshCheckpoints);
  for (const kind of Object.keys(RUN_PANES)) {
    runEl(kind, "btn-preview_dataset").addEventListener("click", () => { previewKind = kind; previewOffset = 0; previewDataset(0); });
    runEl(kind, "btn-preview").addEventListener("click", () => preview(kind));
    runEl(kind, "btn-start").addEventListener("click", () => start(kind));
    runEl(kind, "btn-abort").addEventListener("click", () => abort(kind));
  }
  $("#preview-prev").addEventListener("click", () => previewDataset(-2));
  $("#preview-next").addEventListener("click", () => previewDataset(2));
  $("#preview-close").addEventListener("click", () => $("#preview-dialog").close());
  $("#btn-save").addEventListener("click", saveArgs);
  $("#btn-load").addEventListener("click", loadArgs);
  $("#btn-chat-load").addEventListener("click", chatLoad);
  $("#btn-chat-unload").addEventListener("click", chatUnload);
  $("#btn-chat-submit").addEventListener("click", chatSubmit);
  field("query").el.addEventListener("keydown", (e) => { if (e.key === "Enter") chatSubmit(); });
  $("#btn-export").addEventListener("click", exportModel);
  $("#btn-chat-clear").addEventListener("click", () => { chatHistory = []; renderChat(); });
  for (const b of document.querySelectorAll("#tabs button")) {
    b.addEventListener("click", () => {
      for (const x of document.querySelectorAll("#tabs button")) x.classList.toggle("active", x === b);
      for (const p of document.querySelectorAll(".pane")) p.hidden = p.id !== `pane-${b.dataset.tab}`;
    });
  }
  showMethodGroups();
  await refreshDatasets("train");
  await refreshDatasets("eval");
  await refreshCheckpoints();
  await poll(); // a run started before this page was (re)loaded
  document.body.dataset.ready = "1";
}

main();
