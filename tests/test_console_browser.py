"""The web console in a real headless Chromium (Debian's `chromium`, driven by Playwright), against
`create_app` over the memorised tiny model on a live port. Jobs are the real CLI: a tiny-model
training run from the form, watched to its end, evaluated and loaded into the playground.

Every page is also checked for what it must not do: load from another host, break the CSP,
throw, or open a dialog (an injected script would). Screenshots (1280x800) go to
$QWEN3_LORA_SCREENSHOTS when set (docs/console/ holds the committed ones).
Without chromium or playwright the module is skipped, unless QWEN3_LORA_REQUIRE_BROWSER=1 (CI),
where that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import MEMORISE
from console_support import API_KEY, LiveServer, make_workspace

from qwen3_lora.deploy.serve import ServeConfig, create_app
from qwen3_lora.deploy.serve.console import Console, Jobs, Workspace
from qwen3_lora.deploy.serve.main import adapter_loader
from qwen3_lora.evaluation.report import run_eval

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    sync_playwright = None
_missing = [
    *(["the playwright package (pip install -e '.[test]')"] if sync_playwright is None else []),
    *(["a chromium executable (apt-get install chromium)"] if CHROMIUM is None else []),
]
if _missing:
    _reason = "browser tests need " + " and ".join(_missing)
    if os.environ.get("QWEN3_LORA_REQUIRE_BROWSER") == "1":
        pytest.fail(_reason + " (QWEN3_LORA_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(_reason, allow_module_level=True)

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
MODEL_ID = "memorised-tiny"
JOB_TIMEOUT_MS = 300_000  # a real CLI run on a busy 2-core machine


@pytest.fixture(scope="module")
def live(tmp_path_factory, tuned, memorised_adapter, memorise_file):
    root = tmp_path_factory.mktemp("browser")
    ws = make_workspace(root / "ws")
    shutil.rmtree(ws / "eval" / "demo")  # the fake report: this page shows a real one
    shutil.rmtree(ws / "runs" / "demo")
    run_eval(
        tuned, ws / "eval" / "memorised", data=[memorise_file], compare_base=True, max_new_tokens=16
    )
    config = ServeConfig(
        adapter=str(memorised_adapter),
        precision="fp32",
        api_key=API_KEY,
        served_model_name=MODEL_ID,
        workspace=str(ws),
        enable_training=True,
        max_jobs=2,
    )
    jobs = Jobs(Workspace.open(ws), max_running=2, kill_after_s=5.0)
    console = Console(Workspace.open(ws), jobs, load_adapter=adapter_loader(config))
    with LiveServer(create_app(tuned, config, console=console)) as server:
        server.workspace = ws
        server.outside = root / "outside"
        yield server


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh user-data-dir
            executable_path=CHROMIUM,
            args=ARGS,
            viewport=VIEWPORT,
            locale="zh-CN",  # the page starts in Chinese; tests switch to English themselves
        )
        context.set_default_timeout(20_000)
        yield context
        context.close()


class Page:
    """One tab on the console, recording what it must not do."""

    def __init__(self, context, live):
        self.live = live
        self.page = context.new_page()  # a new tab: an empty sessionStorage, so no key yet
        self.foreign: list[str] = []
        self.problems: list[str] = []
        self.page.route("**/*", self._route)
        self.page.on("pageerror", lambda e: self.problems.append(f"pageerror: {e}"))
        self.page.on("console", self._console)
        self.page.on("dialog", lambda d: (self.problems.append(f"dialog {d.message}"), d.dismiss()))

    def _route(self, route):
        if route.request.url.startswith(self.live.url):
            return route.continue_()
        self.foreign.append(route.request.url)
        return route.abort()

    def _console(self, msg):
        # Refused requests the page handles (401 prompt, 400/403/404 shown) log a resource error.
        if msg.type == "error" and "Failed to load resource" not in msg.text:
            self.problems.append(msg.text)

    def shot(self, name: str) -> None:
        folder = os.environ.get("QWEN3_LORA_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(folder) / name))

    def login(self, hash_: str = "", lang: str = "zh"):
        page = self.page
        page.goto(f"{self.live.url}/{hash_}")
        page.locator("#key-dialog[open]").wait_for()
        page.fill("#key-input", API_KEY)
        page.click("#key-form button[type=submit]")
        expect(page.locator("#model-info .pill")).to_have_text(MODEL_ID)
        if (page.locator("html").get_attribute("lang") or "").startswith("zh") != (lang == "zh"):
            page.click("#lang-toggle")
        return page

    def fetch_status(self, path: str) -> int:
        js = "p => fetch(p, {headers: {Authorization: 'Bearer ' + sessionStorage.getItem('qwen3-lora.api-key')}}).then(r => r.status)"
        return self.page.evaluate(js, path)


@pytest.fixture
def tab(browser, live):
    opened = []

    def make() -> Page:
        opened.append(Page(browser, live))
        return opened[-1]

    yield make
    for p in opened:
        try:
            assert not p.foreign, f"requests to other hosts: {p.foreign}"
            assert not p.problems, p.problems
        finally:
            p.page.close()


def percentages(bars) -> list[float]:
    return [float(v.rstrip("%")) for v in bars.locator(".bar-value").all_inner_texts()]


def test_a_wrong_key_is_refused_and_a_right_one_kept_for_the_tab(tab):
    p = tab()
    page = p.page
    page.goto(p.live.url + "/")
    page.locator("#key-dialog[open]").wait_for()
    page.fill("#key-input", "wrong-key")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-error")).to_have_text("密钥错误，请重试。")
    assert page.locator("#key-dialog").get_attribute("open") is not None
    assert page.locator("#model-info").inner_text() == ""  # nothing shown without the key
    p.shot("01-wrong-key.png")
    page.fill("#key-input", API_KEY)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#model-info .pill")).to_have_text(MODEL_ID)
    page.reload()  # the same tab keeps the key
    expect(page.locator("#model-info .pill")).to_have_text(MODEL_ID)
    assert page.locator("#key-dialog").get_attribute("open") is None


def test_route_a_question_and_see_both_labels_with_probabilities(tab):
    p = tab()
    page = p.login("#playground")
    page.fill("#play-input", MEMORISE[0]["input"])  # memorised: 数据平台相关问题
    page.click("#play-send")
    tuned = page.locator('.column[data-variant="adapter"]')
    base = page.locator('.column[data-variant="base"]')  # the adapter switched off, beside it
    expect(tuned.locator(".latency")).to_be_visible()
    expect(base.locator(".latency")).to_be_visible()
    scene, kind = tuned.locator(".stage").nth(0), tuned.locator(".stage").nth(1)
    expect(scene.locator(".bar-row")).to_have_count(3)
    assert scene.locator(".bar-row.best .bar-label").inner_text() == MEMORISE[0]["output"]
    assert sum(percentages(scene)) == pytest.approx(100, abs=0.3)
    assert max(percentages(scene)) > 50
    expect(kind.locator(".bar-row")).to_have_count(2)  # the type step ran: platform question
    assert sum(percentages(kind)) == pytest.approx(100, abs=0.3)
    expect(base.locator(".stage").nth(0).locator(".bar-row")).to_have_count(3)
    assert percentages(base.locator(".stage").nth(0)) != percentages(scene)
    p.shot("02-playground-route.png")


def test_chat_streams_the_answer_in_english(tab):
    p = tab()
    page = p.login("#playground", lang="en")
    page.check('input[name="mode"][value="chat"]')
    qa = MEMORISE[4]
    page.fill("#play-input", f"任务: {qa['task']}\n输入: {qa['input']}")
    page.click("#play-send")
    answer = page.locator('.column[data-variant="adapter"] .msg.assistant')
    expect(answer).to_have_text(qa["output"])
    expect(page.locator(".column .latency")).to_have_count(2)
    base = page.locator('.column[data-variant="base"] .msg.assistant')
    assert base.inner_text().strip(), "an empty answer is shown as such, not as blank space"
    expect(page.locator("#play-send")).to_have_text("Send")
    p.shot("03-playground-chat-en.png")


def test_an_eval_report_shows_its_confusion_matrix(tab):
    p = tab()
    page = p.login("#reports")
    page.click('.item[data-kind="report"][data-path="eval/memorised"]')
    tuned = page.locator('table.confusion[data-task="问题场景分类"][data-model="tuned"]')
    expect(tuned).to_be_visible()
    expect(page.locator("table.confusion")).to_have_count(4)  # scene and type, base and tuned
    cells = [int(c) for c in tuned.locator("tbody td").all_inner_texts()]
    assert len(cells) == 9 and sum(cells) == 2  # the two scene samples of the eval file
    diagonal = tuned.locator("tbody td.diag").all_inner_texts()
    assert sum(int(c) for c in diagonal) == 2  # memorised: both right
    expect(page.locator("table.metrics tbody tr").first).to_be_visible()
    p.shot("04-report.png")


def test_a_real_training_job_runs_to_its_end_and_its_curve_appears(tab, tiny_model_dir):
    p = tab()
    page = p.login("#training")
    form = page.locator("#train-form")
    # Prefilled with the served model's base: the tiny model folder, outside the workspace.
    assert form.locator('input[name="base_model"]').input_value() == str(tiny_model_dir)
    form.locator('input[name="builtin_data"]').uncheck()
    page.check('.files[data-field="data"] input[value="data/memorise.jsonl"]')
    page.check('.files[data-field="eval_data"] input[value="data/memorise.jsonl"]')
    form.locator('input[name="epochs"]').fill("4")  # 6 samples, 8 per step: 4 steps
    form.locator('input[name="output_dir"]').fill("runs/browser")
    form.locator('button[type="submit"]').click()
    job = page.locator(".job", has=page.locator(".job-out", has_text="runs/browser"))
    expect(job).to_have_class(re.compile("status-running"))
    # A second, real run that fails (a hub id with the hub off), beside it: the next test
    # reads its message.
    form.locator('input[name="base_model"]').fill("nobody/none")
    form.locator('input[name="output_dir"]').fill("runs/broken")
    form.locator('button[type="submit"]').click()
    expect(
        page.locator(".job", has=page.locator(".job-out", has_text="runs/broken"))
    ).to_be_visible()
    job.locator('[data-action="log"]').click()
    expect(job.locator(".progress-text")).to_contain_text("/4", timeout=JOB_TIMEOUT_MS)
    p.shot("05-training-running.png")
    expect(job.locator(".status")).to_have_text("成功", timeout=JOB_TIMEOUT_MS)
    expect(job.locator(".progress-text")).to_contain_text("4/4")
    assert "--no-builtin-data" in job.locator(".command code").text_content()
    log = job.locator("pre.log")
    expect(log).to_contain_text("done: 4 optimizer steps")  # the CLI's last line, ...
    assert "\x1b" not in log.inner_text()  # tqdm's cursor codes are not shown
    at_tail = "e => e.scrollTop + e.clientHeight >= e.scrollHeight - 8"
    page.wait_for_function(
        f"() => ({at_tail})(document.querySelector('.job.status-succeeded pre.log'))"
    )
    p.shot("06-training-done.png")  # ... in view: the log follows its tail
    job.locator('[data-action="curves"]').click()
    loss = page.locator('#report-detail svg.chart path[data-series="训练损失"]')
    expect(loss).to_be_visible()
    expect(page.locator(".run-status .pill.ok")).to_be_visible()
    assert loss.get_attribute("d").count("L") == 3  # four points: one per optimizer step
    expect(page.locator("#report-detail svg.chart g.dots.series-1 circle")).to_have_count(4)
    p.shot("07-run-curves.png")
    # "Evaluate" starts an eval job on the run's held-out file (the API tests run one through).
    page.click('[data-tab="training"]')
    job.locator('[data-action="evaluate"]').click()
    ev = page.locator(".job", has=page.locator(".kind", has_text="评估")).first
    expect(ev).to_have_class(re.compile("status-running"))
    command = ev.locator(".command code").text_content()
    assert "--compare-base" in command and "memorise.jsonl" in command and " eval " in command
    ev.locator('[data-action="cancel"]').click()
    expect(ev.locator(".status")).to_have_text("已取消", timeout=30_000)
    # Load it into the playground: the header names it and it answers.
    job.locator('[data-action="load"]').click()
    expect(page.locator("#model-info")).to_contain_text("runs/browser", timeout=60_000)
    assert page.url.endswith("#playground")
    page.fill("#play-input", MEMORISE[0]["input"])
    page.click("#play-send")
    column = page.locator('.column[data-variant="adapter"]')
    expect(column.locator(".latency")).to_be_visible(timeout=30_000)
    assert column.locator(".stage").first.locator(".bar-row").count() == 3, column.inner_text()


def test_a_failing_run_shows_the_clis_own_message(tab):
    p = tab()
    page = p.login("#training", lang="en")
    job = page.locator(".job", has=page.locator(".job-out", has_text="runs/broken"))
    expect(job.locator(".status")).to_have_text("failed", timeout=JOB_TIMEOUT_MS)
    expect(job.locator(".job-error pre")).to_contain_text("error: cannot load 'nobody/none'")
    # Invalid fields start nothing: every problem is listed.
    form = page.locator("#train-form")
    expect(form.locator('[data-field="base_model"] span')).to_have_text("Base model")
    form.locator('input[name="output_dir"]').fill("../outside")
    form.locator('input[name="epochs"]').fill("500")
    form.locator('button[type="submit"]').click()
    expect(page.locator("#train-problems li")).to_have_count(2)
    expect(page.locator("#train-problems")).to_contain_text("'..' is not allowed")
    p.shot("08-training-failed-en.png")


def test_a_path_outside_the_workspace_is_refused(tab, live):
    live.outside.mkdir()
    (live.outside / "metrics.jsonl").write_text('{"step": 1, "loss": 9.9}\n')
    (live.workspace / "runs" / "sneaky").symlink_to(live.outside)
    p = tab()
    page = p.login("#reports", lang="en")
    for path, says in (("..%2F..%2Fetc", "'..' is not allowed"), ("runs%2Fsneaky", "outside")):
        page.goto(f"{live.url}/#reports/run/{path}")
        expect(page.locator("#report-detail .error")).to_contain_text(says)
    p.shot("09-outside-refused-en.png")
    # The browser resolves `..` and `%2e%2e` segments itself (another route: 404); an encoded
    # slash reaches the server as `..` parts (400); the symlink resolves outside (403).
    assert p.fetch_status("/api/workspace/runs/%2e%2e/%2e%2e/etc/metrics") == 404
    assert p.fetch_status("/api/workspace/runs/..%2F..%2Fetc/metrics") == 400
    assert p.fetch_status("/api/workspace/runs/runs/sneaky/metrics") == 403
    assert "runs/sneaky" not in page.locator("#run-list").inner_text()
    assert "9.9" not in page.content()
