// qwen3-lora console: plain JS, no build step, no dependencies, nothing loaded from elsewhere.
// Every API call sends the key kept in sessionStorage (this tab only). Text from the server is
// always inserted as text (textContent), never as HTML.
"use strict";

const I18N = {
  zh: {
    console: "控制台", "tab.playground": "试用", "tab.reports": "报告", "tab.training": "训练",
    "key.forget": "清除密钥", "key.title": "需要 API 密钥",
    "key.help": "本服务启用了 --api-key。密钥只保存在当前标签页（sessionStorage）。",
    "key.submit": "进入", "key.wrong": "密钥错误，请重试。",
    "mode.route": "路由（场景 → 类型 → 回答/文件名）", "mode.task": "单个任务", "mode.chat": "对话（流式）",
    "play.placeholder": "输入一个问题，例如：帮我把西安市地类图斑发布成服务",
    "play.send": "发送", "play.compare": "与基座模型并排比较", "play.thinking": "思考模式",
    "play.clear": "清空对话", "play.running": "运行中…",
    "col.adapter": "微调模型（适配器）", "col.base": "基座模型（关闭适配器）", "col.model": "模型",
    scene: "问题场景", type: "问题类型", action: "动作", answer: "回答", file_name: "文件名称",
    label: "标签", latency: "耗时", "latency.server": "服务端", "latency.total": "往返",
    "action.answer": "回答问题", "action.task": "执行任务", "action.general": "通用问题", "action.reject": "拒绝（无关）",
    none: "（无）", skipped: "未执行（场景不是数据平台）",
    "reports.evals": "评估报告", "reports.runs": "训练记录", refresh: "刷新",
    "reports.empty": "工作区中还没有内容。", "reports.pick": "从左侧选择一个报告或训练记录。",
    "report.metrics": "各任务指标", "report.confusion": "混淆矩阵", "report.misses": "错误样本",
    "report.refpred": "参考 \\ 预测", task: "任务", metric: "指标", delta: "差值",
    input: "输入", reference: "参考答案", prediction: "预测", probability: "概率",
    "misses.none": "没有错误样本。", "misses.more": "加载更多", all: "全部", model: "模型",
    samples: "样本数", created: "创建时间", base_model: "基座模型", adapter: "适配器", data: "数据",
    "run.loss": "训练损失", "run.eval_loss": "验证损失", step: "步数", "run.finished": "已完成",
    "run.running": "进行中", "run.live": "实时更新中", "run.rows": "条记录", "run.last": "最新",
    "training.off": "训练功能未开启：请用 qwen3-lora serve --workspace DIR --enable-training 启动服务。",
    "training.new": "新建训练", "training.start": "开始训练", "training.jobs": "任务",
    "training.nojobs": "还没有任务。", "training.nofiles": "工作区中没有 .jsonl/.json 数据文件。",
    "f.base_model": "基座模型", "f.data": "训练数据（工作区文件）", "f.builtin_data": "包含内置训练集",
    "f.eval_data": "验证数据（默认：内置验证集）", "f.chat_template": "对话模板（可选：内置名称或工作区 .jinja 文件）",
    "f.loss_on": "对话数据：学习哪些助手回复（all 全部；last 仅最后一个）",
    "f.epochs": "轮数", "f.max_steps": "最大步数（-1 不限）", "f.learning_rate": "学习率", "f.lora_r": "LoRA r",
    "f.lora_alpha": "LoRA alpha", "f.batch_size": "微批大小", "f.grad_accum": "梯度累积步数",
    "f.output_dir": "输出目录（工作区内）",
    "job.train": "训练", "job.eval": "评估", "job.cancel": "取消", "job.log": "日志",
    "job.hidelog": "收起日志", "job.curves": "查看曲线", "job.evaluate": "评估", "job.load": "加载到试用",
    "job.report": "查看报告", "job.started": "开始", "job.eta": "剩余", "job.tps": "tokens/s",
    "job.loaded": "已加载适配器：", "job.tasks_done": "已完成的任务评估", "job.error": "失败原因",
    "status.running": "运行中", "status.succeeded": "成功", "status.failed": "失败",
    "status.cancelled": "已取消", "status.lost": "丢失",
    error: "错误",
  },
  en: {
    console: "console", "tab.playground": "Playground", "tab.reports": "Reports", "tab.training": "Training",
    "key.forget": "Forget key", "key.title": "API key required",
    "key.help": "This server runs with --api-key. The key is kept in this tab only (sessionStorage).",
    "key.submit": "Enter", "key.wrong": "Wrong key, try again.",
    "mode.route": "Router (scene → type → answer/file name)", "mode.task": "One task", "mode.chat": "Chat (streaming)",
    "play.placeholder": "Ask something, e.g. 帮我把西安市地类图斑发布成服务",
    "play.send": "Send", "play.compare": "Compare with the base model", "play.thinking": "Thinking",
    "play.clear": "Clear chat", "play.running": "Running…",
    "col.adapter": "Tuned (adapter)", "col.base": "Base (adapter off)", "col.model": "Model",
    scene: "Scene", type: "Type", action: "Action", answer: "Answer", file_name: "File name",
    label: "Label", latency: "Latency", "latency.server": "server", "latency.total": "round trip",
    "action.answer": "answer", "action.task": "task", "action.general": "general question", "action.reject": "reject (unrelated)",
    none: "(none)", skipped: "not run (scene is not the data platform)",
    "reports.evals": "Evaluation reports", "reports.runs": "Training runs", refresh: "Refresh",
    "reports.empty": "Nothing in the workspace yet.", "reports.pick": "Pick a report or a training run on the left.",
    "report.metrics": "Metrics per task", "report.confusion": "Confusion matrices", "report.misses": "Misses",
    "report.refpred": "reference \\ prediction", task: "Task", metric: "Metric", delta: "Δ",
    input: "Input", reference: "Reference", prediction: "Prediction", probability: "Probability",
    "misses.none": "No misses.", "misses.more": "Load more", all: "all", model: "Model",
    samples: "Samples", created: "Created", base_model: "Base model", adapter: "Adapter", data: "Data",
    "run.loss": "train loss", "run.eval_loss": "eval loss", step: "step", "run.finished": "finished",
    "run.running": "running", "run.live": "updating live", "run.rows": "rows", "run.last": "latest",
    "training.off": "Training is off: start the server with qwen3-lora serve --workspace DIR --enable-training.",
    "training.new": "New training run", "training.start": "Start training", "training.jobs": "Jobs",
    "training.nojobs": "No jobs yet.", "training.nofiles": "No .jsonl/.json data files in the workspace.",
    "f.base_model": "Base model", "f.data": "Training data (workspace files)", "f.builtin_data": "Include the built-in train split",
    "f.eval_data": "Eval data (default: the built-in eval split)", "f.chat_template": "Chat template (optional: a built-in name or a workspace .jinja file)",
    "f.loss_on": "Conversations: learn every assistant turn (all) or the last one (last)",
    "f.epochs": "Epochs", "f.max_steps": "Max steps (-1: no limit)", "f.learning_rate": "Learning rate", "f.lora_r": "LoRA r",
    "f.lora_alpha": "LoRA alpha", "f.batch_size": "Micro-batch size", "f.grad_accum": "Gradient accumulation",
    "f.output_dir": "Output folder (inside the workspace)",
    "job.train": "train", "job.eval": "eval", "job.cancel": "Cancel", "job.log": "Log",
    "job.hidelog": "Hide log", "job.curves": "Curves", "job.evaluate": "Evaluate", "job.load": "Load into playground",
    "job.report": "Open report", "job.started": "started", "job.eta": "ETA", "job.tps": "tokens/s",
    "job.loaded": "Adapter loaded: ", "job.tasks_done": "task evaluations done", "job.error": "Why it failed",
    "status.running": "running", "status.succeeded": "succeeded", "status.failed": "failed",
    "status.cancelled": "cancelled", "status.lost": "lost",
    error: "Error",
  },
};

const KEY_STORE = "qwen3-lora.api-key";
const LANG_STORE = "qwen3-lora.lang";
let lang = localStorage.getItem(LANG_STORE) || ((navigator.language || "").startsWith("zh") ? "zh" : "en");
let info = null;
let tasks = [];
const timers = { jobs: null, run: null, logs: new Map() };

function t(key) {
  return (I18N[lang] && I18N[lang][key]) || I18N.en[key] || key;
}

// ------------------------------------------------------------------ DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "style") el.style.cssText = v; // CSSOM: allowed by the page's CSP, unlike style=""
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const $ = (sel) => document.querySelector(sel);
const fmt = (x, digits = 3) => (typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–");
const pct = (x) => (typeof x === "number" ? (x * 100).toFixed(1) + "%" : "–");

function duration(s) {
  if (typeof s !== "number" || !isFinite(s)) return "–";
  s = Math.round(s);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
}

function toast(message, kind = "error") {
  const el = $("#toast");
  el.textContent = message;
  el.className = "toast " + kind;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (el.hidden = true), 6000);
}

function applyI18n() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-i18n]").forEach((el) => (el.textContent = t(el.dataset.i18n)));
  document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => (el.placeholder = t(el.dataset.i18nPlaceholder)));
  $("#lang-toggle").textContent = lang === "zh" ? "EN" : "中文";
}

// ------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code;
    this.problems = err.problems || [];
  }
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { Authorization: "Bearer " + key } : {};
}

async function api(path, { method = "GET", body, signal, stream = false } = {}) {
  const headers = { ...authHeaders() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body) });
  if (res.status === 401) {
    askKey(sessionStorage.getItem(KEY_STORE) ? t("key.wrong") : "");
    throw new ApiError(401, await res.json().catch(() => null));
  }
  if (stream && res.ok) return res;
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// ------------------------------------------------------------------ key prompt

let keyWaiters = [];

function askKey(message) {
  const dialog = $("#key-dialog");
  $("#key-error").textContent = message || "";
  if (!dialog.open) dialog.showModal();
  $("#key-input").focus();
  return new Promise((resolve) => keyWaiters.push(resolve));
}

function setupKeyDialog() {
  $("#key-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("#key-input").value.trim());
    try {
      await loadInfo();
    } catch (e) {
      if (e.status === 401) sessionStorage.removeItem(KEY_STORE); // askKey() says "wrong key"
      else $("#key-error").textContent = e.message;
      return;
    }
    $("#key-dialog").close();
    $("#key-input").value = "";
    const waiters = keyWaiters;
    keyWaiters = [];
    waiters.forEach((w) => w());
    route();
  });
  $("#key-dialog").addEventListener("cancel", (ev) => ev.preventDefault()); // no way around it
  $("#logout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    location.reload();
  });
}

// ------------------------------------------------------------------ info / header

async function loadInfo() {
  info = await api("/api/info");
  const tasksBody = await api("/v1/tasks");
  tasks = tasksBody.data || [];
  renderHeader();
  return info;
}

function renderHeader() {
  const box = $("#model-info");
  box.replaceChildren();
  if (!info) return;
  const adapter = info.adapter_in_workspace || (info.adapter ? info.adapter.split("/").filter(Boolean).pop() : null);
  box.append(h("span", { class: "pill", text: info.model }));
  if (info.base_model) box.append(h("span", { class: "muted", text: " " + t("base_model") + ": " + info.base_model }));
  if (adapter) box.append(h("span", { class: "muted", text: " · " + t("adapter") + ": " + adapter }));
  box.title = [info.base_model, info.adapter].filter(Boolean).join(" + ");
  $("#logout").hidden = !sessionStorage.getItem(KEY_STORE);
  $("#compare-wrap").hidden = !info.compare;
  const sel = $("#task-select");
  const chosen = sel.value;
  sel.replaceChildren(...tasks.map((tk) => h("option", { value: tk.id, text: `${tk.name} (${tk.id})` })));
  if (chosen) sel.value = chosen;
}

// ------------------------------------------------------------------ tabs

function route() {
  const tab = (location.hash || "#playground").slice(1).split("/")[0];
  const known = ["playground", "reports", "training"];
  const current = known.includes(tab) ? tab : "playground";
  for (const name of known) {
    $("#tab-" + name).hidden = name !== current;
    const link = document.querySelector(`[data-tab="${name}"]`);
    link.classList.toggle("active", name === current);
    link.setAttribute("aria-selected", String(name === current));
  }
  stopJobPolling();
  if (current !== "reports") stopRunPolling();
  if (!info) return;
  if (current === "reports") showReports();
  if (current === "training") showTraining();
}

// ------------------------------------------------------------------ playground

const chatHistory = { adapter: [], base: [] };

function bars(scores, best) {
  const wrap = h("div", { class: "bars" });
  const entries = Object.entries(scores || {});
  for (const [label, p] of entries) {
    const row = h("div", { class: "bar-row" + (label === best ? " best" : ""), "data-label": label },
      h("span", { class: "bar-label", text: label }),
      h("span", { class: "bar-track" }, h("span", { class: "bar-fill", style: `width:${Math.max(0, Math.min(1, p)) * 100}%` })),
      h("span", { class: "bar-value", text: pct(p) }));
    wrap.append(row);
  }
  return wrap;
}

function stage(title, content) {
  return h("div", { class: "stage" }, h("h4", { text: title }), content);
}

function resultColumn(variant, title) {
  const col = h("div", { class: "card column", "data-variant": variant }, h("h3", { text: title }));
  return col;
}

function variants() {
  const compare = info && info.compare && $("#compare").checked;
  const list = [{ key: "adapter", adapter: true, title: info && info.has_adapter ? t("col.adapter") : t("col.model") }];
  if (compare) list.push({ key: "base", adapter: false, title: t("col.base") });
  return list;
}

function renderRoute(col, r, totalMs) {
  col.append(stage(t("scene"), r.scene ? bars(r.scene.scores || { [r.scene.label]: r.scene.probability }, r.scene.label) : t("none")));
  col.append(stage(t("type"), r.type ? bars(r.type.scores || { [r.type.label]: r.type.probability }, r.type.label) : h("span", { class: "muted", text: t("skipped") })));
  col.append(stage(t("action"), h("span", { class: "pill action-" + r.action, text: t("action." + r.action) })));
  if (r.action === "answer") col.append(stage(t("answer"), h("div", { class: "answer", text: r.answer || t("none") })));
  if (r.action === "task") col.append(stage(t("file_name"), h("div", { class: "answer file-name", text: r.file_name || t("none") })));
  col.append(h("div", { class: "latency muted", text: `${t("latency")}: ${t("latency.server")} ${fmt(r.latency_ms, 0)} ms · ${t("latency.total")} ${totalMs} ms` }));
}

function renderTask(col, r, totalMs) {
  if (r.label !== undefined) {
    col.append(stage(t("label"), r.scores ? bars(r.scores, r.label) : h("div", { class: "answer", text: r.label })));
  } else {
    col.append(stage(t("answer"), h("div", { class: "answer", text: r.answer || t("none") })));
  }
  col.append(h("div", { class: "latency muted", text: `${t("latency")}: ${t("latency.total")} ${totalMs} ms` }));
}

async function runOnce(variant, col, mode, text) {
  const began = performance.now();
  try {
    let r;
    if (mode === "route") r = await api("/v1/route", { method: "POST", body: { input: text, adapter: variant.adapter } });
    else r = await api("/v1/tasks/" + encodeURIComponent($("#task-select").value), { method: "POST", body: { input: text, adapter: variant.adapter } });
    const ms = Math.round(performance.now() - began);
    (mode === "route" ? renderRoute : renderTask)(col, r, ms);
  } catch (e) {
    col.append(h("p", { class: "error", text: e.message }));
  }
}

async function* sseEvents(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

function renderChatLog(col, history) {
  const log = h("div", { class: "chat-log" });
  for (const m of history) log.append(h("div", { class: "msg " + m.role, text: m.content }));
  col.append(log);
  return log;
}

async function chatOnce(variant, col, text) {
  const history = chatHistory[variant.key];
  history.push({ role: "user", content: text });
  const log = renderChatLog(col, history);
  const thinkingEl = h("div", { class: "msg thinking", hidden: true });
  const answerEl = h("div", { class: "msg assistant streaming" });
  log.append(thinkingEl, answerEl);
  const began = performance.now();
  let firstMs = null;
  let answer = "";
  try {
    const body = { messages: history, stream: true, adapter: variant.adapter, max_tokens: 256 };
    if ($("#thinking").checked) body.chat_template_kwargs = { enable_thinking: true };
    const res = await api("/v1/chat/completions", { method: "POST", body, stream: true });
    for await (const ev of sseEvents(res)) {
      if (ev.error) throw new Error(ev.error.message);
      const delta = (ev.choices && ev.choices[0] && ev.choices[0].delta) || {};
      if (delta.reasoning_content) {
        thinkingEl.hidden = false;
        thinkingEl.textContent += delta.reasoning_content;
      }
      if (delta.content) {
        if (firstMs === null) firstMs = Math.round(performance.now() - began);
        answer += delta.content;
        answerEl.textContent = answer.trimStart(); // as the non-streamed answer is trimmed
      }
    }
    answer = answer.trim();
    history.push({ role: "assistant", content: answer });
    if (!answer) {
      answerEl.textContent = t("none");
      answerEl.classList.add("muted");
    }
  } catch (e) {
    history.pop();
    answerEl.classList.add("error");
    answerEl.textContent = e.message;
  }
  answerEl.classList.remove("streaming");
  const total = Math.round(performance.now() - began);
  col.append(h("div", { class: "latency muted", text: `${t("latency")}: first token ${firstMs ?? "–"} ms · ${t("latency.total")} ${total} ms` }));
}

function playMode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

function setupPlayground() {
  const updateMode = () => {
    const mode = playMode();
    $("#task-select").hidden = mode !== "task";
    $("#thinking-wrap").hidden = mode !== "chat";
    $("#chat-clear").hidden = mode !== "chat";
    $("#play-results").replaceChildren();
  };
  document.querySelectorAll('input[name="mode"]').forEach((r) => r.addEventListener("change", updateMode));
  $("#chat-clear").addEventListener("click", () => {
    chatHistory.adapter = [];
    chatHistory.base = [];
    $("#play-results").replaceChildren();
  });
  $("#play-input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) $("#play-form").requestSubmit();
  });
  $("#play-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = $("#play-input").value.trim();
    if (!text) return;
    const mode = playMode();
    const results = $("#play-results");
    results.replaceChildren();
    $("#play-send").disabled = true;
    $("#play-status").textContent = t("play.running");
    const cols = variants().map((v) => {
      const col = resultColumn(v.key, v.title);
      results.append(col);
      return [v, col];
    });
    try {
      if (mode === "chat") {
        $("#play-input").value = "";
        // One model thread serves both: run them one after the other.
        for (const [v, col] of cols) await chatOnce(v, col, text);
      } else {
        await Promise.all(cols.map(([v, col]) => runOnce(v, col, mode, text)));
      }
    } finally {
      $("#play-send").disabled = false;
      $("#play-status").textContent = "";
    }
  });
  updateMode();
}

// ------------------------------------------------------------------ charts (inline SVG)

const SVG = "http://www.w3.org/2000/svg";

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) {
    hi = lo + 1;
  }
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw) || raw;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(+v.toFixed(10));
  return ticks;
}

function lineChart(series, { width = 760, height = 300, xLabel = "" } = {}) {
  const m = { l: 56, r: 16, t: 16, b: 40 };
  const pts = series.flatMap((se) => se.points);
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, width, height, role: "img" });
  if (!pts.length) return svg;
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (x1 === x0) x1 = x0 + 1;
  const pad = (y1 - y0) * 0.08 || 0.1;
  y0 = Math.max(0, y0 - pad);
  y1 = y1 + pad;
  const X = (x) => m.l + ((x - x0) / (x1 - x0)) * (width - m.l - m.r);
  const Y = (y) => height - m.b - ((y - y0) / (y1 - y0)) * (height - m.t - m.b);
  const grid = s("g", { class: "grid" });
  for (const v of niceTicks(y0, y1, 7)) {
    if (v < y0 || v > y1) continue;
    grid.append(s("line", { x1: m.l, x2: width - m.r, y1: Y(v), y2: Y(v) }));
    grid.append(s("text", { x: m.l - 6, y: Y(v) + 4, "text-anchor": "end" }, +v.toFixed(4)));
  }
  for (const v of niceTicks(x0, x1, 8)) {
    if (v < x0 || v > x1 || v % 1 !== 0) continue; // steps are whole numbers
    grid.append(s("text", { x: X(v), y: height - m.b + 16, "text-anchor": "middle" }, v));
  }
  grid.append(s("text", { x: (m.l + width - m.r) / 2, y: height - 6, "text-anchor": "middle", class: "axis-label" }, xLabel));
  svg.append(grid);
  svg.append(s("line", { class: "axis", x1: m.l, x2: m.l, y1: m.t, y2: height - m.b }));
  svg.append(s("line", { class: "axis", x1: m.l, x2: width - m.r, y1: height - m.b, y2: height - m.b }));
  series.forEach((se, i) => {
    if (!se.points.length) return;
    const d = se.points.map((p, j) => (j ? "L" : "M") + X(p[0]).toFixed(1) + "," + Y(p[1]).toFixed(1)).join("");
    svg.append(s("path", { d, class: "line series-" + i, "data-series": se.name }));
    if (se.dots || se.points.length < 40) {
      const g = s("g", { class: "dots series-" + i });
      for (const p of se.points) g.append(s("circle", { cx: X(p[0]), cy: Y(p[1]), r: se.dots ? 3.5 : 2 }));
      svg.append(g);
    }
    svg.append(s("rect", { x: width - m.r - 150, y: m.t + 4 + i * 18, width: 12, height: 4, class: "swatch series-" + i }));
    svg.append(s("text", { x: width - m.r - 132, y: m.t + 10 + i * 18, class: "legend" }, se.name));
  });
  return svg;
}

// ------------------------------------------------------------------ reports

let selected = null; // {kind: "report"|"run", path}

async function showReports() {
  await refreshLists();
  const want = parseHashSelection();
  if (want) open(want.kind, want.path);
  else if (!selected) $("#report-detail").replaceChildren(h("div", { class: "card muted", text: t("reports.pick") }));
}

async function refreshLists() {
  const [reports, runs] = await Promise.all([
    api("/api/workspace/reports").catch((e) => ({ data: [], error: e })),
    api("/api/workspace/runs").catch((e) => ({ data: [], error: e })),
  ]);
  const rl = $("#report-list");
  const ul = $("#run-list");
  rl.replaceChildren(...reports.data.map((r) => item("report", r.path || ".", r.created || "", r.models ? r.models.join(" / ") : r.error)));
  ul.replaceChildren(...runs.data.map((r) => item("run", r.path || ".", `${t("step")} ${r.steps}${r.last_loss != null ? " · loss " + fmt(r.last_loss) : ""}`, r.finished ? t("run.finished") : t("run.running"))));
  if (!reports.data.length) rl.append(h("li", { class: "muted", text: reports.error ? reports.error.message : t("reports.empty") }));
  if (!runs.data.length) ul.append(h("li", { class: "muted", text: runs.error ? runs.error.message : t("reports.empty") }));
}

function parseHashSelection() {
  const m = location.hash.match(/^#reports\/(report|run)\/(.+)$/);
  return m ? { kind: m[1], path: decodeURIComponent(m[2]) } : null;
}

function item(kind, path, sub, badge) {
  const li = h("li", { class: "item", "data-kind": kind, "data-path": path, onclick: () => { location.hash = `#reports/${kind}/${encodeURIComponent(path)}`; } },
    h("div", { class: "item-title", text: path }),
    h("div", { class: "item-sub muted" }, sub, badge ? h("span", { class: "pill small", text: badge }) : null));
  if (selected && selected.kind === kind && selected.path === path) li.classList.add("active");
  return li;
}

function markActive() {
  document.querySelectorAll("#tab-reports .item").forEach((li) =>
    li.classList.toggle("active", !!selected && li.dataset.kind === selected.kind && li.dataset.path === selected.path));
}

function apiPath(path) {
  // Browsers resolve "." and ".." segments (even as %2E%2E) before sending, so a path with them
  // would silently reach another route: refuse it here, as the server would.
  const segments = path.split("/");
  if (segments.some((seg) => seg === "." || seg === "..")) throw new Error(`${path}: '..' is not allowed in workspace paths`);
  return segments.map(encodeURIComponent).join("/");
}

async function open(kind, path) {
  stopRunPolling();
  selected = { kind, path };
  markActive();
  const detail = $("#report-detail");
  detail.replaceChildren(h("div", { class: "card muted", text: "…" }));
  try {
    if (kind === "report") await openReport(detail, path);
    else await openRun(detail, path);
  } catch (e) {
    detail.replaceChildren(h("div", { class: "card error", text: e.message }));
  }
}

async function openReport(detail, path) {
  const { report, misses } = await api("/api/workspace/reports/" + apiPath(path));
  const models = Object.keys(report.models || {});
  const head = h("div", { class: "card" },
    h("h2", { text: path }),
    h("dl", { class: "facts" },
      ...[["created", report.created], ["base_model", report.base_model], ["adapter", report.adapter], ["samples", report.samples], ["data", Array.isArray(report.data) ? report.data.join(", ") : report.data]]
        .filter(([, v]) => v !== null && v !== undefined)
        .flatMap(([k, v]) => [h("dt", { text: t(k) }), h("dd", { text: String(v) })])));
  // Metrics table: one row per task x metric, one column per model (+ delta for two).
  const first = report.models[models[0]] || {};
  const table = h("table", { class: "metrics" },
    h("thead", {}, h("tr", {}, h("th", { text: t("task") }), h("th", { text: "n" }), h("th", { text: t("metric") }),
      ...models.map((mo) => h("th", { text: mo })), models.length === 2 ? h("th", { text: t("delta") }) : null)));
  const tbody = h("tbody");
  for (const [task, entry] of Object.entries(first)) {
    for (const metric of Object.keys(entry.metrics || {})) {
      const vals = models.map((mo) => (((report.models[mo] || {})[task] || {}).metrics || {})[metric]);
      const cells = vals.map((v) => h("td", { class: "num" }, h("span", { class: "cell-bar", style: `width:${(v || 0) * 100}%` }), h("span", { text: fmt(v) })));
      let delta = null;
      if (models.length === 2 && typeof vals[0] === "number" && typeof vals[1] === "number") {
        const d = vals[1] - vals[0];
        delta = h("td", { class: "num " + (d > 0 ? "up" : d < 0 ? "down" : ""), text: (d > 0 ? "+" : "") + d.toFixed(3) });
      } else if (models.length === 2) delta = h("td", { text: "–" });
      tbody.append(h("tr", {}, h("td", { text: task }), h("td", { class: "num", text: entry.n }), h("td", { text: metric }), ...cells, delta));
    }
  }
  table.append(tbody);
  const metricsCard = h("div", { class: "card" }, h("h3", { text: t("report.metrics") }), table);
  // Confusion matrices.
  const conf = h("div", { class: "card" }, h("h3", { text: t("report.confusion") }));
  const grid = h("div", { class: "confusions" });
  for (const task of Object.keys(first)) {
    for (const mo of models) {
      const c = ((report.models[mo] || {})[task] || {}).confusion;
      if (c) grid.append(confusion(task, mo, c));
    }
  }
  conf.append(grid);
  // Misses.
  const missCard = h("div", { class: "card misses" }, h("h3", { text: t("report.misses") }));
  const counts = h("div", { class: "muted" });
  for (const [mo, byTask] of Object.entries(misses || {})) {
    counts.append(h("span", { class: "pill small", text: `${mo}: ` + Object.entries(byTask).map(([k, v]) => `${k} ${v}`).join(", ") }), " ");
  }
  const modelSel = h("select", {}, h("option", { value: "", text: t("all") }), ...models.map((mo) => h("option", { value: mo, text: mo })));
  const taskSel = h("select", {}, h("option", { value: "", text: t("all") }), ...Object.keys(first).map((tk) => h("option", { value: tk, text: tk })));
  const missTable = h("div");
  const loadMisses = async (offset = 0) => {
    const q = new URLSearchParams({ offset, limit: 50 });
    if (modelSel.value) q.set("model", modelSel.value);
    if (taskSel.value) q.set("task", taskSel.value);
    const res = await api(`/api/workspace/reports/${apiPath(path)}/misses?${q}`);
    if (offset === 0) missTable.replaceChildren();
    if (!res.total) return missTable.append(h("p", { class: "muted", text: t("misses.none") }));
    let tb = missTable.querySelector("tbody");
    if (!tb) {
      tb = h("tbody");
      missTable.append(h("table", { class: "miss-table" },
        h("thead", {}, h("tr", {}, ...["model", "task", "input", "reference", "prediction", "probability"].map((k) => h("th", { text: t(k) })))), tb));
    }
    for (const r of res.data) {
      tb.append(h("tr", {}, h("td", { text: r.model }), h("td", { text: r.task }), h("td", { class: "text", text: r.input }),
        h("td", { class: "text ref", text: r.reference }), h("td", { class: "text pred", text: r.prediction }), h("td", { class: "num", text: r.probability == null ? "–" : pct(r.probability) })));
    }
    missTable.querySelector(".more")?.remove();
    if (offset + res.data.length < res.total) missTable.append(h("button", { class: "ghost more", type: "button", text: t("misses.more"), onclick: () => loadMisses(offset + res.data.length) }));
  };
  modelSel.addEventListener("change", () => loadMisses());
  taskSel.addEventListener("change", () => loadMisses());
  missCard.append(counts, h("div", { class: "row" }, h("label", {}, t("model") + " ", modelSel), h("label", {}, t("task") + " ", taskSel)), missTable);
  detail.replaceChildren(head, metricsCard, conf, missCard);
  await loadMisses();
}

function confusion(task, model, c) {
  const max = Math.max(1, ...c.matrix.flat());
  const table = h("table", { class: "confusion", "data-task": task, "data-model": model },
    h("caption", { text: `${task} · ${model}` }),
    h("thead", {}, h("tr", {}, h("th", { class: "corner", text: t("report.refpred") }), ...c.columns.map((col) => h("th", { text: col })))));
  const tb = h("tbody");
  c.rows.forEach((row, i) => {
    tb.append(h("tr", {}, h("th", { text: row }), ...c.matrix[i].map((n, j) => {
      const diag = c.columns[j] === row;
      const alpha = n ? 0.12 + 0.78 * (n / max) : 0;
      const color = diag ? `rgba(36,150,90,${alpha})` : `rgba(214,69,65,${alpha})`;
      return h("td", { class: "num" + (diag ? " diag" : ""), style: `background:${color}`, text: n });
    })));
  });
  table.append(tb);
  return table;
}

function stopRunPolling() {
  clearTimeout(timers.run);
  timers.run = null;
}

async function openRun(detail, path) {
  const rows = [];
  let offset = 0;
  let wasRunning = false;
  const chartBox = h("div", { class: "chart-box" });
  const status = h("div", { class: "muted run-status" });
  const last = h("dl", { class: "facts" });
  detail.replaceChildren(h("div", { class: "card" }, h("h2", { text: path }), status, chartBox, last));
  const poll = async () => {
    if (!selected || selected.kind !== "run" || selected.path !== path) return;
    let res;
    try {
      res = await api(`/api/workspace/runs/${apiPath(path)}/metrics?offset=${offset}`);
    } catch (e) {
      status.replaceChildren(h("span", { class: "error", text: e.message }));
      return;
    }
    if (res.reset) rows.length = 0;
    rows.push(...res.rows);
    offset = res.offset;
    const loss = rows.filter((r) => typeof r.loss === "number").map((r) => [r.step, r.loss]);
    const evalLoss = rows.filter((r) => typeof r.eval_loss === "number").map((r) => [r.step, r.eval_loss]);
    chartBox.replaceChildren(lineChart([{ name: t("run.loss"), points: loss }, { name: t("run.eval_loss"), points: evalLoss, dots: true }], { xLabel: t("step") }));
    const lastRow = [...rows].reverse().find((r) => typeof r.loss === "number") || {};
    const total = res.progress && res.progress.max_steps;
    status.replaceChildren(
      h("span", { class: "pill small " + (res.finished ? "ok" : "live"), text: res.finished ? t("run.finished") : t("run.live") }),
      ` ${rows.length} ${t("run.rows")}` + (total ? ` · ${t("step")} ${lastRow.step ?? 0}/${total}` : ""));
    last.replaceChildren(...[["step", lastRow.step], ["run.loss", fmt(lastRow.loss, 4)], ["run.eval_loss", fmt(evalLoss.length ? evalLoss[evalLoss.length - 1][1] : undefined, 4)], ["job.tps", lastRow.tokens_per_s]]
      .flatMap(([k, v]) => [h("dt", { text: t(k) }), h("dd", { text: v ?? "–" })]));
    if (!res.finished) timers.run = setTimeout(poll, 1500);
    else if (wasRunning) refreshLists(); // the list still says "running"
    wasRunning = !res.finished;
  };
  await poll();
}

// ------------------------------------------------------------------ training

function stopJobPolling() {
  clearTimeout(timers.jobs);
  timers.jobs = null;
  for (const timer of timers.logs.values()) clearTimeout(timer);
  timers.logs.clear();
}

let dataFiles = [];

function stamp() {
  return new Date().toISOString().slice(0, 19).replace(/[-:]/g, "").replace("T", "-");
}

function fieldLabel(f) {
  // A field the page has no label for (a new TrainConfig field) shows its own name.
  const key = "f." + f.name;
  return h("span", { text: t(key) === key ? f.name : t(key), "data-i18n": I18N.en[key] ? key : null });
}

// One input per field of the server's training form (fields.TRAIN_FORM): its kind says how.
function formField(f) {
  const label = (control) => h("label", { class: f.kind === "bool" ? "check" : "", title: f.help || "", "data-field": f.name },
    f.kind === "bool" ? control : null, fieldLabel(f), f.kind === "bool" ? null : control);
  if (f.kind === "files") {
    const box = h("div", { class: "files", "data-field": f.name });
    return h("fieldset", { title: f.help || "" }, h("legend", {}, fieldLabel(f)), box);
  }
  if (f.kind === "bool") return label(h("input", { type: "checkbox", name: f.name, checked: !!f.default }));
  if (f.kind === "number") {
    return label(h("input", { type: "number", name: f.name, step: f.type === "int" ? "1" : "any", value: f.default ?? "", "data-type": f.type }));
  }
  if (f.kind === "choice") {
    return label(h("select", { name: f.name }, ...(f.choices || []).map((v) => h("option", { value: v, selected: v === f.default, text: v }))));
  }
  const attrs = { name: f.name, required: !!f.required, autocomplete: "off" };
  if (f.kind === "model") attrs.list = "base-models";
  if (f.kind === "template") Object.assign(attrs, { list: "templates", placeholder: "qwen3 / chatml / templates/x.jinja" });
  return label(h("input", attrs));
}

function buildTrainForm() {
  const box = $("#train-fields");
  if (box.dataset.built) return;
  const fields = (info.forms && info.forms.train) || [];
  const numbers = fields.filter((f) => f.kind === "number");
  const others = fields.filter((f) => f.kind !== "number");
  const grid = h("div", { class: "grid2" }, ...numbers.map(formField));
  const before = others.filter((f) => f.name !== "output_dir").map(formField);
  const after = others.filter((f) => f.name === "output_dir").map(formField);
  box.replaceChildren(...before, grid, ...after,
    h("datalist", { id: "base-models" }, ...[...new Set([info.base_model, "Qwen/Qwen3-0.6B", "tiny"].filter(Boolean))].map((v) => h("option", { value: v }))),
    h("datalist", { id: "templates" }, ...["qwen3", "chatml", "gemma"].map((v) => h("option", { value: v }))));
  const form = $("#train-form");
  if (form.base_model) form.base_model.value = info.base_model || "";
  box.dataset.built = "1";
}

function renderFileLists() {
  document.querySelectorAll("#train-fields .files").forEach((box) => {
    const name = box.dataset.field;
    const checked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
    box.replaceChildren(...dataFiles.map((f) => h("label", { class: "check" }, h("input", { type: "checkbox", name, value: f, checked: checked.has(f) }), " " + f)));
    if (!dataFiles.length) box.append(h("span", { class: "muted", text: t("training.nofiles") }));
  });
}

async function showTraining() {
  $("#training-off").hidden = info.training;
  $("#training-on").hidden = !info.training;
  if (!info.training) return;
  buildTrainForm();
  const form = $("#train-form");
  if (form.output_dir && !form.output_dir.value) form.output_dir.value = "runs/" + stamp();
  try {
    dataFiles = (await api("/api/workspace/files")).data;
  } catch (e) {
    dataFiles = []; // the job list shows the server's errors
  }
  renderFileLists();
  await pollJobs();
}

function trainFields(form) {
  const fields = {};
  for (const f of (info.forms && info.forms.train) || []) {
    if (f.kind === "files") {
      const picked = [...form.querySelectorAll(`input[name="${f.name}"]:checked`)].map((i) => i.value);
      if (picked.length) fields[f.name] = picked;
    } else if (f.kind === "bool") {
      fields[f.name] = form[f.name].checked;
    } else if (f.kind === "number") {
      if (form[f.name].value !== "") fields[f.name] = Number(form[f.name].value);
    } else if (form[f.name].value.trim()) {
      fields[f.name] = form[f.name].value.trim();
    }
  }
  return fields;
}

async function pollJobs() {
  clearTimeout(timers.jobs);
  let body;
  try {
    body = await api("/api/jobs");
  } catch (e) {
    $("#job-list").replaceChildren(h("p", { class: "error", text: e.message }));
    return;
  }
  renderJobs(body.data);
  if (!$("#tab-training").hidden) timers.jobs = setTimeout(pollJobs, body.data.some((j) => j.status === "running") ? 1000 : 4000);
}

const openLogs = new Set();

function renderJobs(jobs) {
  const list = $("#job-list");
  if (!jobs.length) return list.replaceChildren(h("p", { class: "muted", text: t("training.nojobs") }));
  const existing = new Map([...list.querySelectorAll(".job")].map((el) => [el.dataset.id, el]));
  const kept = [];
  const cards = jobs.map((job) => {
    const card = jobCard(job);
    const old = existing.get(job.id);
    const oldLog = old && old.querySelector(".log");
    if (oldLog && openLogs.has(job.id)) {
      // Moving the element resets its scroll: keep the reader where they were (at the tail).
      const atBottom = oldLog.scrollTop + oldLog.clientHeight >= oldLog.scrollHeight - 8;
      kept.push([oldLog, atBottom ? Infinity : oldLog.scrollTop]);
      card.querySelector(".log-slot").replaceWith(oldLog);
    }
    return card;
  });
  list.replaceChildren(...cards);
  for (const [log, top] of kept) log.scrollTop = top === Infinity ? log.scrollHeight : top;
  for (const id of openLogs) if (!timers.logs.has(id)) pollLog(id);
}

function jobCard(job) {
  const p = job.progress || {};
  const frac = typeof p.fraction === "number" ? p.fraction : null;
  const progressText = job.kind === "train"
    ? `${t("step")} ${p.step ?? 0}/${p.total ?? "?"}` + (p.tokens_per_s ? ` · ${Math.round(p.tokens_per_s)} ${t("job.tps")}` : "") +
      (p.eta_s != null && job.status === "running" ? ` · ${t("job.eta")} ${duration(p.eta_s)}` : "") + (p.loss != null ? ` · loss ${fmt(p.loss, 4)}` : "")
    : (p.tasks_done ? `${t("job.tasks_done")}: ${p.tasks_done}` : "");
  const actions = h("div", { class: "row actions" });
  if (job.status === "running") actions.append(h("button", { type: "button", class: "danger", "data-action": "cancel", text: t("job.cancel"), onclick: () => cancelJob(job.id) }));
  actions.append(h("button", { type: "button", class: "ghost", "data-action": "log", text: openLogs.has(job.id) ? t("job.hidelog") : t("job.log"), onclick: () => toggleLog(job.id) }));
  if (job.kind === "train") {
    actions.append(h("button", { type: "button", class: "ghost", "data-action": "curves", text: t("job.curves"), onclick: () => { location.hash = `#reports/run/${encodeURIComponent(job.output_dir)}`; } }));
    if (job.status === "succeeded") {
      actions.append(h("button", { type: "button", "data-action": "evaluate", text: t("job.evaluate"), onclick: () => evaluateJob(job) }));
      if (info.can_load) actions.append(h("button", { type: "button", "data-action": "load", text: t("job.load"), onclick: () => loadAdapter(job.output_dir) }));
    }
  } else if (job.status === "succeeded") {
    actions.append(h("button", { type: "button", "data-action": "report", text: t("job.report"), onclick: () => { location.hash = `#reports/report/${encodeURIComponent(job.output_dir)}`; } }));
  }
  const started = job.started ? new Date(job.started * 1000).toLocaleString(lang === "zh" ? "zh-CN" : "en-GB") : "";
  return h("div", { class: "job status-" + job.status, "data-id": job.id },
    h("div", { class: "row job-head" },
      h("span", { class: "pill small kind", text: t("job." + job.kind) }),
      h("strong", { class: "job-out", text: job.output_dir }),
      h("span", { class: "pill status", text: t("status." + job.status) }),
      h("span", { class: "muted", text: `${t("job.started")} ${started}` })),
    h("div", { class: "progress" + (frac === null && job.status === "running" ? " indeterminate" : "") },
      h("span", { class: "progress-fill", style: `width:${(frac ?? (job.status === "succeeded" ? 1 : 0)) * 100}%` })),
    h("div", { class: "muted progress-text", text: progressText }),
    job.error ? h("div", { class: "job-error" }, h("strong", { text: t("job.error") + ": " }), h("pre", { text: job.error })) : null,
    h("details", { class: "command" }, h("summary", { text: "argv" }), h("code", { text: job.command })),
    actions,
    h("div", { class: "log-slot" }));
}

function cleanLog(text) {
  // tqdm redraws its bar with '\r' and moves the cursor with escape codes: keep what a
  // terminal would show last on each line, without the codes.
  return text.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "").split("\n").map((line) => line.split("\r").filter(Boolean).pop() || "").join("\n");
}

function toggleLog(id) {
  const card = document.querySelector(`.job[data-id="${id}"]`);
  if (openLogs.has(id)) {
    openLogs.delete(id);
    clearTimeout(timers.logs.get(id));
    timers.logs.delete(id);
    card.querySelector(".log")?.replaceWith(h("div", { class: "log-slot" }));
    card.querySelector('[data-action="log"]').textContent = t("job.log");
    return;
  }
  openLogs.add(id);
  card.querySelector(".log-slot").replaceWith(h("pre", { class: "log", "data-offset": "" }));
  card.querySelector('[data-action="log"]').textContent = t("job.hidelog");
  pollLog(id);
}

async function pollLog(id) {
  clearTimeout(timers.logs.get(id));
  const pre = document.querySelector(`.job[data-id="${id}"] .log`);
  if (!pre || !openLogs.has(id)) return;
  const offset = pre.dataset.offset;
  try {
    const res = await api(`/api/jobs/${encodeURIComponent(id)}/log` + (offset ? `?offset=${offset}` : ""));
    const raw = (pre.dataset.raw || "") + res.text;
    pre.dataset.raw = raw.slice(-200000);
    pre.dataset.offset = res.offset;
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    pre.textContent = cleanLog(pre.dataset.raw);
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  } catch (e) {
    pre.textContent = e.message;
  }
  const job = document.querySelector(`.job[data-id="${id}"]`);
  const running = job && job.classList.contains("status-running");
  timers.logs.set(id, setTimeout(() => pollLog(id), running ? 1000 : 5000));
}

async function cancelJob(id) {
  try {
    await api(`/api/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
  } catch (e) {
    toast(e.message);
  }
  pollJobs();
}

async function evaluateJob(job) {
  // On the run's own held-out files when it had some, else the built-in eval split.
  const fields = { adapter: job.output_dir, output_dir: `${job.output_dir}/eval-${stamp()}`, compare_base: true };
  if (job.fields && job.fields.eval_data && job.fields.eval_data.length) fields.data = job.fields.eval_data;
  try {
    await api("/api/jobs", { method: "POST", body: { kind: "eval", fields } });
  } catch (e) {
    toast(e.message);
  }
  pollJobs();
}

async function loadAdapter(path) {
  try {
    info = await api("/api/model/load", { method: "POST", body: { adapter: path } });
    renderHeader();
    toast(t("job.loaded") + path, "ok");
    location.hash = "#playground";
  } catch (e) {
    toast(e.message);
  }
}

function setupTraining() {
  $("#train-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = ev.target;
    const problems = $("#train-problems");
    problems.replaceChildren();
    try {
      await api("/api/jobs", { method: "POST", body: { kind: "train", fields: trainFields(form) } });
      form.output_dir.value = "";
      showTraining();
    } catch (e) {
      const list = e.problems && e.problems.length ? e.problems : [e.message];
      problems.replaceChildren(...list.map((p) => h("li", { text: p })));
    }
  });
  $("#reports-refresh").addEventListener("click", () => showReports());
}

// ------------------------------------------------------------------ start

async function start() {
  applyI18n();
  setupKeyDialog();
  setupPlayground();
  setupTraining();
  $("#lang-toggle").addEventListener("click", () => {
    lang = lang === "zh" ? "en" : "zh";
    localStorage.setItem(LANG_STORE, lang);
    applyI18n();
    renderHeader();
    route();
  });
  window.addEventListener("hashchange", route);
  route();
  try {
    await loadInfo();
  } catch (e) {
    if (e.status !== 401) toast(e.message);
    return; // the key dialog calls route() once a key works
  }
  route();
}

document.addEventListener("DOMContentLoaded", start);
