// Browser test of `ferrotune webui`: Debian's chromium, headless, driven by playwright-core.
//
//   (cd tests/browser && npm ci) && node tests/browser/webui.test.mjs
//
// Environment: FERROTUNE_BIN (default target/release/ferrotune), CHROMIUM (default /usr/bin/chromium),
// WEBUI_SCREENSHOTS (default target/webui-screenshots). The server runs in a fresh temporary working directory,
// so saves/ and llamaboard_config/ never touch the repository. Steps: load the page, switch to Chinese (and
// check it is remembered across a reload) and back, fill a LoRA run of the tiny fixture model on data/identity,
// preview the command, start it, wait for 100% and the loss plot, check a second Start on the finished dir is
// refused, chat with the trained adapter (streamed answer), export it merged (config.json, model.safetensors,
// Modelfile), and evaluate it on a few identity prompts (Evaluate & Predict: 100%, the BLEU / ROUGE scores shown,
// generated_predictions.jsonl written).
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, existsSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const bin = path.resolve(repo, process.env.FERROTUNE_BIN || "target/release/ferrotune");
const shots = path.resolve(repo, process.env.WEBUI_SCREENSHOTS || "target/webui-screenshots");
const browserPath = process.env.CHROMIUM || "/usr/bin/chromium";
const model = path.join(repo, "tests/fixtures/models/tiny_chat");
const dataDir = path.join(repo, "data");
mkdirSync(shots, { recursive: true });
const work = mkdtempSync(path.join(tmpdir(), "ferrotune-webui-"));
const t0 = Date.now();
const log = (m) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${m}`);

// Start the server on a free port and read the address it prints.
const server = spawn(bin, ["webui", "--port", "0"], { cwd: work, stdio: ["ignore", "pipe", "inherit"] });
const url = await new Promise((resolve, reject) => {
  let out = "";
  const timer = setTimeout(() => reject(new Error(`no address from ferrotune webui in 20 s: ${out}`)), 20000);
  server.stdout.on("data", (d) => {
    out += d;
    const m = out.match(/http:\/\/[\d.]+:\d+\//);
    if (m) {
      clearTimeout(timer);
      resolve(m[0]);
    }
  });
  server.on("exit", (c) => reject(new Error(`ferrotune webui exited with ${c}: ${out}`)));
});
log(`server at ${url}, working directory ${work}`);

const browser = await chromium.launch({ executablePath: browserPath, headless: true, args: ["--no-sandbox"] });
let failed = false;
const page = await browser.newPage({ viewport: { width: 1280, height: 1400 } });
try {
  page.on("pageerror", (e) => { failed = true; console.error("page error:", e.message); });
  await page.goto(url);
  await page.waitForSelector("body[data-ready='1']", { timeout: 15000 });
  assert.equal(await page.textContent("#btn-start"), "Start");
  await page.screenshot({ path: path.join(shots, "01-loaded.png"), fullPage: true });
  log("page loaded");

  // Every string of the table in all five languages (label, and help where English has one).
  const missing = await page.evaluate(() => Object.entries(window.I18N).flatMap(([k, v]) =>
    window.LANGS.filter((l) => !v[l] || v[l].length !== v.en.length || v[l].some((x) => !x)).map((l) => `${k}.${l}`)));
  assert.deepEqual(missing, []);
  // Every control has a help text.
  const noHelp = await page.$$eval(".field", (fs) => fs.filter((f) => !f.querySelector(".help").textContent.trim()).map((f) => f.dataset.field));
  assert.deepEqual(noHelp, []);

  // Language: relabels live, remembered across a reload, and back to English.
  await page.selectOption("#f-lang", "zh");
  assert.equal(await page.textContent("#btn-start"), "开始");
  assert.equal(await page.textContent("[data-i18n='learning_rate']"), "学习率");
  assert.match(await page.textContent("[data-i18n-help='learning_rate']"), /优化器/);
  await page.screenshot({ path: path.join(shots, "02-chinese.png"), fullPage: true });
  await page.reload();
  await page.waitForSelector("body[data-ready='1']");
  assert.equal(await page.textContent("#btn-start"), "开始", "the language is remembered");
  await page.selectOption("#f-lang", "en");
  assert.equal(await page.textContent("#btn-start"), "Start");
  assert.equal(await page.textContent("[data-i18n='learning_rate']"), "Learning rate");
  log("language switched to zh and back");

  // What ferrotune lacks is visible but disabled, with the reason.
  assert.equal(await page.isDisabled("#f-quantization_bit"), true);
  assert.equal(await page.isDisabled("#f-use_galore"), true);
  assert.equal(await page.$eval("#f-stage option[value='dpo']", (o) => o.disabled), true);

  // A tiny-model LoRA run.
  await page.selectOption("#f-model_name", "Custom");
  await page.fill("#f-model_path", model);
  await page.click("#advanced > summary");
  await page.selectOption("#f-template", "default");
  await page.fill("#f-dataset_dir", dataDir);
  await page.dispatchEvent("#f-dataset_dir", "change");
  await page.waitForSelector("#f-dataset option[value='identity']");
  await page.selectOption("#f-dataset", ["identity"]);
  await page.fill("#f-learning_rate", "1e-3");
  await page.fill("#f-num_train_epochs", "1");
  await page.fill("#f-max_samples", "16");
  await page.selectOption("#f-compute_type", "fp32");
  await page.fill("#f-cutoff_len", "64");
  await page.fill("#f-batch_size", "2");
  await page.fill("#f-gradient_accumulation_steps", "1");
  await page.click("#group-extra_tab > summary");
  await page.fill("#f-logging_steps", "1");
  await page.fill("#f-save_steps", "4");
  await page.click("#group-lora_tab > summary");
  await page.fill("#f-lora_rank", "4");
  await page.fill("#f-output_dir", "train_browser");

  // Preview dataset (paged viewer).
  await page.click("#btn-preview_dataset");
  await page.waitForSelector("#preview-dialog[open]");
  assert.match(await page.textContent("#preview-title"), /identity: \d+/);
  await page.screenshot({ path: path.join(shots, "03-dataset-preview.png") });
  await page.click("#preview-close");

  await page.click("#btn-preview");
  await page.waitForFunction(() => document.querySelector("#output-box").textContent.includes("ferrotune train"));
  const previewText = await page.textContent("#output-box");
  assert.equal(await page.getAttribute("#output-box", "data-preview-ok"), "true", previewText);
  assert.match(previewText, /finetuning_type: lora/);
  assert.match(previewText, /output_dir: saves\/custom\/lora\/train_browser/);
  await page.screenshot({ path: path.join(shots, "04-preview-command.png"), fullPage: true });
  log("command previewed");

  await page.click("#btn-start");
  await page.waitForSelector("#output-box[data-state='finished']", { timeout: 60000 });
  assert.equal(await page.getAttribute("#progress-wrap", "data-percentage"), "100");
  assert.match(await page.textContent("#progress-label"), /^Running 8\/8: \S+ < \S+$/);
  const points = Number(await page.getAttribute("#loss-plot", "data-points"));
  assert.ok(points >= 2, `loss plot has ${points} points`);
  const out = path.join(work, "saves/custom/lora/train_browser");
  for (const f of ["training_args.yaml", "adapter_model.safetensors", "trainer_log.jsonl", "checkpoint-8"]) {
    assert.ok(existsSync(path.join(out, f)), `${f} in ${out}`);
  }
  await page.screenshot({ path: path.join(shots, "05-finished.png"), fullPage: true });
  log(`run finished at 100%, loss plot with ${points} points`);

  // A finished output dir is never overwritten.
  await page.click("#btn-start");
  await page.waitForFunction(() => document.querySelector("#output-box").textContent.includes("finished run"));
  log("second Start on the finished dir refused");

  // Picking an existing run's output dir loads the form that started it and says what Start would do there
  // (LLaMA-Factory's check_output_dir).
  await page.fill("#f-lora_rank", "16");
  await page.dispatchEvent("#f-output_dir", "change");
  await page.waitForFunction(() => document.querySelector("#f-lora_rank").value === "4");
  assert.match(await page.textContent("#output-box"), /already holds a finished run/);
  log("picking the finished run's output dir restored its form");

  // Chat with the result: the adapter just trained, picked in the top bar's checkpoint list.
  await page.click("#btn-refresh");
  await page.waitForSelector("#f-checkpoint_path option[value='train_browser']");
  await page.selectOption("#f-checkpoint_path", ["train_browser"]);
  await page.click("#tab-chat");
  await page.click("#btn-chat-load");
  await page.waitForSelector("#chat-box:not([hidden])", { timeout: 30000 });
  await page.fill("#f-max_new_tokens", "16");
  await page.fill("#f-query", "Who are you?");
  await page.click("#btn-chat-submit");
  await page.waitForSelector("#chat-log[data-turns='2']", { timeout: 30000 });
  assert.match(await page.getAttribute("#chat-log", "data-finish"), /^(stop|length)$/);
  assert.equal(await page.textContent("#chat-log .msg.user"), "Who are you?");
  await page.screenshot({ path: path.join(shots, "06-chat.png"), fullPage: true });
  await page.click("#btn-chat-unload");
  log("chatted with the trained adapter");

  // Export the adapter just trained (still picked in the top bar): the export dir is required, then the merged
  // HF folder is written; what ferrotune lacks is disabled with the reason.
  await page.click("#tab-export");
  for (const id of ["export_quantization_bit", "export_quantization_dataset", "export_legacy_format", "export_hub_model_id", "export_device"]) {
    assert.equal(await page.isDisabled(`#f-${id}`), true, `${id} is disabled`);
  }
  assert.match(await page.textContent("[data-field='export_quantization_bit'] .reason"), /GPTQ export quantization is not implemented/);
  assert.match(await page.textContent("[data-field='export_device'] .reason"), /^No effect in ferrotune:/);
  assert.equal(await page.inputValue("#f-export_size"), "5");
  await page.click("#btn-export");
  await page.waitForSelector("#export-info[data-state='error']");
  assert.match(await page.textContent("#export-info"), /Please specify export dir/);
  await page.fill("#f-export_dir", "exported");
  await page.click("#btn-export");
  await page.waitForSelector("#export-info[data-state='done']", { timeout: 60000 });
  assert.match(await page.textContent("#export-info"), /^Model exported to exported/);
  for (const f of ["config.json", "model.safetensors", "Modelfile"]) {
    assert.ok(existsSync(path.join(work, "exported", f)), `${f} in ${work}/exported`);
  }
  await page.screenshot({ path: path.join(shots, "07-export.png"), fullPage: true });
  // The same folder again: refused, the model there is kept.
  await page.click("#btn-export");
  await page.waitForSelector("#export-info[data-state='error']");
  assert.match(await page.textContent("#export-info"), /already holds a model/);
  log("exported the trained adapter merged into the model");

  // Evaluate & Predict the adapter just trained (still picked in the top bar): 6 prompts, batch 2, 8 new tokens.
  await page.click("#tab-eval");
  assert.equal(await page.inputValue("#f-eval_cutoff_len"), "1024", "LLaMA-Factory's defaults");
  assert.equal(await page.inputValue("#f-eval_max_new_tokens"), "512");
  assert.equal(await page.isChecked("#f-predict"), true);
  await page.fill("#f-eval_dataset_dir", dataDir);
  await page.dispatchEvent("#f-eval_dataset_dir", "change");
  await page.waitForSelector("#f-eval_dataset option[value='identity']");
  await page.selectOption("#f-eval_dataset", ["identity"]);
  await page.fill("#f-eval_cutoff_len", "64");
  await page.fill("#f-eval_max_samples", "6");
  await page.fill("#f-eval_max_new_tokens", "8");
  await page.fill("#f-eval_output_dir", "eval_browser");
  await page.click("#eval-btn-preview");
  await page.waitForFunction(() => document.querySelector("#eval-output-box").textContent.includes("ferrotune train"));
  const evalPreview = await page.textContent("#eval-output-box");
  assert.equal(await page.getAttribute("#eval-output-box", "data-preview-ok"), "true", evalPreview);
  assert.match(evalPreview, /\nadapter_name_or_path: saves\/custom\/lora\/train_browser\n/);
  assert.match(evalPreview, /\ndo_predict: true\n/);
  assert.match(evalPreview, /\npredict_with_generate: true\n/);
  assert.match(evalPreview, /\noutput_dir: saves\/custom\/lora\/eval_browser\n/);
  await page.click("#eval-btn-start");
  await page.waitForSelector("#eval-output-box[data-state='finished']", { timeout: 60000 });
  assert.equal(await page.getAttribute("#eval-progress-wrap", "data-percentage"), "100");
  assert.match(await page.textContent("#eval-progress-label"), /^Running 3\/3: \S+ < \S+$/);
  const evalText = await page.textContent("#eval-output-box");
  for (const k of ["predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l"]) {
    assert.match(evalText, new RegExp(`"${k}": \\d`), `${k} in the output box`);
  }
  const evalOut = path.join(work, "saves/custom/lora/eval_browser");
  for (const f of ["generated_predictions.jsonl", "predict_results.json", "all_results.json"]) {
    assert.ok(existsSync(path.join(evalOut, f)), `${f} in ${evalOut}`);
  }
  assert.equal(await page.isDisabled("#btn-start"), false, "Train's Start is free again");
  await page.screenshot({ path: path.join(shots, "08-eval-predict.png"), fullPage: true });
  log("evaluated the trained adapter: 100%, scores shown");
  assert.ok(!failed, "no JavaScript errors on the page");
  log(`passed; screenshots in ${shots}`);
} catch (e) {
  // What the page said, and how it looked, when a step failed.
  console.error("output box:", await page.textContent("#output-box").catch(() => "?"));
  console.error("chat info:", await page.textContent("#chat-info").catch(() => "?"));
  console.error("eval output box:", await page.textContent("#eval-output-box").catch(() => "?"));
  await page.screenshot({ path: path.join(shots, "failure.png"), fullPage: true }).catch(() => {});
  throw e;
} finally {
  await browser.close();
  server.kill();
  rmSync(work, { recursive: true, force: true });
}
