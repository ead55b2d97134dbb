"""Background `qwen3-lora train` / `qwen3-lora eval` jobs started from the console.

A job is a validated form (`fields.parse_job`) run as an argv list under `jobrunner.py`, in a
session of its own: it survives the page, the request and the server. Its state lives in
`<workspace>/.jobs/`: `<id>.json` (the record, rewritten atomically), `<id>.log` (the command's
stdout and stderr) and `<id>.exit.json` (the exit code, written by the runner). A server
started later over the same workspace re-attaches to jobs still running (a process of the job's
group runs, zombies aside, and the leader's pid was not reused) and reads the exit files of
those that ended meanwhile; a job whose processes vanished without an exit file is `lost`.

Cancel sends SIGTERM to the job's process group, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ....evaluation.report import REPORT_JSON
from ....files import atomic_write_text
from ....models.adapter import ADAPTER_CONFIG
from ....training.outputs import METRICS_FILE
from ..errors import ApiError, error_type
from ..settings import API_KEY_ENV
from .fields import JobSpec, parse_job
from .joblog import failure_reason, read_log, read_tail
from .reports import read_metrics, read_progress
from .workspace import JOBS_DIR, Workspace

RUNNER = Path(__file__).with_name("jobrunner.py")
CLI = (sys.executable, "-m", "qwen3_lora")
RUNNING, FINAL = "running", ("succeeded", "failed", "cancelled", "lost")
JOB_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-(train|eval)-[0-9a-f]{6}$")
EVAL_TASK_DONE = re.compile(r"\b(base|tuned|model) \S+: [a-z_0-9]+ \d")
PRODUCTS = {"train": ADAPTER_CONFIG, "eval": REPORT_JSON}  # what a successful job leaves
PROGRESS_KEYS = ("loss", "eval_loss", "tokens_per_s", "epoch", "learning_rate")


class JobError(ApiError):
    def __init__(self, status: int, message: str, code: str):
        super().__init__(status, message, type=error_type(status), code=code)


def _proc_stat(pid: int | str) -> tuple[str, int, int] | None:
    """(state letter, process group, start time in clock ticks since boot), from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2 :].split()  # the command name may hold spaces and ')'
    try:
        return rest[0], int(rest[2]), int(rest[19])
    except (IndexError, ValueError):
        return None


def _group_has_live_member(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs. Zombies do not count: an ended process
    stays one until its parent (or, for orphans, an init that may never) reaps it."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(entry.name)
            if stat is not None and stat[1] == pgid and stat[0] != "Z":
                return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Jobs:
    """Starts, watches, cancels and lists the workspace's jobs (thread-safe)."""

    def __init__(
        self,
        workspace: Workspace,
        *,
        max_running: int = 1,
        prefix: tuple[str, ...] = CLI,
        kill_after_s: float = 10.0,
        env: dict[str, str] | None = None,
    ):
        self.ws = workspace
        self.dir = workspace.root / JOBS_DIR
        self.max_running = max_running
        self.prefix = tuple(prefix)
        self.kill_after_s = kill_after_s
        self.extra_env = dict(env or {})
        self._lock = threading.RLock()
        self._procs: dict[str, subprocess.Popen] = {}
        self._metrics: dict[str, dict] = {}  # job id -> what its metrics.jsonl said so far

    def _path(self, job_id: str, suffix: str = ".json") -> Path:
        if not isinstance(job_id, str) or not JOB_ID.match(job_id):
            raise JobError(404, f"no job {job_id!r}", "job_not_found")
        return self.dir / f"{job_id}{suffix}"

    def _load(self, job_id: str) -> dict:
        try:
            return json.loads(self._path(job_id).read_text("utf-8"))
        except FileNotFoundError:
            raise JobError(404, f"no job {job_id!r}", "job_not_found") from None
        except (OSError, ValueError) as exc:
            raise JobError(500, f"job {job_id}: unreadable record: {exc}", "bad_job") from None

    def _save(self, job: dict) -> None:
        atomic_write_text(self._path(job["id"]), json.dumps(job, ensure_ascii=False, indent=1))

    def _ids(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        ids = (p.name[: -len(".json")] for p in self.dir.glob("*.json"))
        return sorted((i for i in ids if JOB_ID.match(i)), reverse=True)

    def _still_running(self, job: dict) -> bool:
        proc = self._procs.get(job["id"])
        if proc is not None:
            return proc.poll() is None
        # Started by an earlier server: its group, unless the leader's pid now names another
        # process (its start time differs).
        leader = _proc_stat(job["pgid"])
        if leader is not None and leader[2] != job.get("pid_start"):
            return False
        return _group_has_live_member(job["pgid"])

    def _refresh(self, job: dict) -> dict:
        """Bring a running job's record up to date with its processes."""
        if job["status"] != RUNNING or self._still_running(job):
            return job
        proc = self._procs.pop(job["id"], None)
        try:
            ended = json.loads(self._path(job["id"], ".exit.json").read_text("utf-8"))
        except (OSError, ValueError):
            ended = None
        job["ended"] = (ended or {}).get("ended") or time.time()
        job["exit_code"] = ended.get("exit_code") if ended else getattr(proc, "returncode", None)
        product = PRODUCTS[job["kind"]]
        if job.get("cancel_requested"):
            job["status"] = "cancelled"
        elif ended is None and proc is None:
            job["status"] = "lost"
            job["error"] = "the job's processes ended while no server watched; see its log"
        elif job["exit_code"] == 0 and (self.ws.root / job["output_dir"] / product).is_file():
            job["status"] = "succeeded"
        else:
            job["status"] = "failed"
            tail = read_tail(self._path(job["id"], ".log"), 8192).decode("utf-8", "replace")
            if job["exit_code"] == 0:
                job["error"] = f"exited 0 but wrote no {product}"
            else:
                job["error"] = failure_reason(tail) or f"exit code {job['exit_code']}"
        self._save(job)
        return job

    def _train_progress(self, job: dict) -> dict:
        out = self.ws.root / job["output_dir"]
        seen = self._metrics.setdefault(job["id"], {"offset": 0, "last": {}, "step": 0})
        chunk = read_metrics(out / METRICS_FILE, seen["offset"])
        if chunk["reset"]:
            seen.update(last={}, step=0)
        for row in chunk["rows"]:
            seen["step"] = max(seen["step"], int(row.get("step") or 0))
            seen["last"].update(
                {k: row[k] for k in PROGRESS_KEYS if isinstance(row.get(k), (int, float))}
            )
        seen["offset"] = chunk["offset"]
        trainer = read_progress(self.ws, out) or {}
        step = max(seen["step"], int(trainer.get("step") or 0))
        total = trainer.get("max_steps") or job.get("planned_steps")
        progress: dict[str, Any] = {"step": step, "total": total, **seen["last"]}
        progress["fraction"] = min(1.0, step / total) if total else None
        began = trainer.get("started")
        if total and step and began and job["status"] == RUNNING:
            progress["eta_s"] = round((time.time() - began) / step * max(0, total - step), 1)
        return progress

    def _progress(self, job: dict) -> dict:
        if job["kind"] == "train":
            progress = self._train_progress(job)
        else:
            tail = read_tail(self._path(job["id"], ".log"), 64 << 10).decode("utf-8", "replace")
            progress = {"tasks_done": len(EVAL_TASK_DONE.findall(tail)), "fraction": None}
        if job["status"] == "succeeded":
            progress["fraction"] = 1.0
        return progress

    def _view(self, job: dict) -> dict:
        out = {k: v for k, v in job.items() if k not in ("pid_start", "pgid")}
        out["command"] = shlex.join(job["argv"])
        out["progress"] = self._progress(job)
        return out

    def list(self) -> list[dict]:
        with self._lock:
            jobs = []
            for job_id in self._ids():
                with contextlib.suppress(JobError):
                    jobs.append(self._view(self._refresh(self._load(job_id))))
            return jobs

    def get(self, job_id: str) -> dict:
        with self._lock:
            return self._view(self._refresh(self._load(job_id)))

    def _running(self) -> list[dict]:
        jobs = (self._refresh(self._load(i)) for i in self._ids())
        return [job for job in jobs if job["status"] == RUNNING]

    def start(self, kind: str, raw_fields: Any, allowed_models: tuple[str, ...] = ()) -> dict:
        """Validate a form and start its job; 409 at the running-jobs limit or a busy folder."""
        with self._lock:
            spec = parse_job(kind, raw_fields, self.ws, allowed_models)
            running = self._running()
            if len(running) >= self.max_running:
                raise JobError(
                    409,
                    f"{len(running)} job(s) running, the limit is {self.max_running}: wait for "
                    f"one to end or cancel it",
                    "too_many_jobs",
                )
            for other in running:
                if other["output_dir"] == spec.output_dir:
                    raise JobError(409, f"job {other['id']} writes there", "output_in_use")
            job = self._launch(spec)
            self._save(job)
            return self._view(job)

    def _launch(self, spec: JobSpec) -> dict:
        argv = [*self.prefix, spec.kind, *spec.args]
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{spec.kind}-{secrets.token_hex(3)}"
        self.dir.mkdir(exist_ok=True)
        (self.ws.root / spec.output_dir).mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}  # jobs need no key
        env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", **self.extra_env)
        with self._path(job_id, ".log").open("ab") as log:
            log.write(f"$ {shlex.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                [sys.executable, str(RUNNER), str(self._path(job_id, ".exit.json")), "--", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.ws.root,
                env=env,
                start_new_session=True,  # its own process group: outlives the server
                close_fds=True,
            )
        self._procs[job_id] = proc
        now = time.time()
        return {
            "id": job_id,
            "kind": spec.kind,
            "fields": spec.fields,
            "argv": argv,
            "output_dir": spec.output_dir,
            "status": RUNNING,
            "created": now,
            "started": now,
            "ended": None,
            "pgid": proc.pid,
            "pid_start": (_proc_stat(proc.pid) or (None, None, None))[2],
            "exit_code": None,
            "cancel_requested": None,
            "error": None,
            "log": f"{job_id}.log",
            "planned_steps": spec.planned_steps,
        }

    def cancel(self, job_id: str) -> dict:
        """SIGTERM to the job's process group now, SIGKILL after `kill_after_s`."""
        with self._lock:
            job = self._refresh(self._load(job_id))
            if job["status"] != RUNNING:
                raise JobError(409, f"job {job_id} is {job['status']}, not running", "not_running")
            if not job.get("cancel_requested"):
                job["cancel_requested"] = time.time()
                self._save(job)
        _signal_group(job["pgid"], signal.SIGTERM)
        timer = threading.Timer(self.kill_after_s, self._kill_if_alive, (job_id, job["pgid"]))
        timer.daemon = True
        timer.start()
        return self.get(job_id)

    def _kill_if_alive(self, job_id: str, pgid: int) -> None:
        with self._lock:
            proc = self._procs.get(job_id)
            ended = (
                proc.poll() is not None if proc is not None else not _group_has_live_member(pgid)
            )
        if not ended:
            _signal_group(pgid, signal.SIGKILL)

    def log(self, job_id: str, offset: int | None = None) -> dict:
        """Log text from byte `offset` (default: the tail), in pages (`joblog.read_log`)."""
        self._load(job_id)
        return read_log(self._path(job_id, ".log"), offset)
