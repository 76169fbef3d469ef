"""The bench's process plumbing: machine facts and CPU accounting, the live display, the bench's own
Prefect API, and one measured run as a subprocess in its own session (CPU and peak RSS from ``wait4``).

Used by :mod:`fredflow.bench.harness`, which holds the loop over scenarios, sizes and runners.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

RUN_TIMEOUT_S = 900.0


# --------------------------------------------------------------------------- machine and CPU accounting


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gb"] = round(int(mem) / 2**20, 1)
    except OSError:
        pass
    try:
        import fredflow

        info["fredflow"] = fredflow.__version__
        repo = Path(fredflow.__file__).resolve().parents[2]
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            info["git"] = head.stdout.strip() + ("+dirty" if dirty else "")
    except Exception:  # noqa: BLE001 - informative only
        pass
    info["loadavg_at_start"] = round(os.getloadavg()[0], 2)
    return info


def _tree_cpu(pid: int | None) -> float:
    """CPU seconds of a process and its live descendants (0 when gone)."""
    if pid is None:
        return 0.0
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def _busy_cpu() -> float:
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system


@dataclass
class CpuSnapshot:
    busy: float
    sim: float
    prefect: float
    harness: float

    @classmethod
    def take(cls, sim_pid: int | None, prefect_pid: int | None) -> "CpuSnapshot":
        me = resource.getrusage(resource.RUSAGE_SELF)
        return cls(_busy_cpu(), _tree_cpu(sim_pid), _tree_cpu(prefect_pid), me.ru_utime + me.ru_stime)


# --------------------------------------------------------------------------- display


class Display:
    """A rich progress display on stderr (runs done, the current run's series), or plain lines."""

    def __init__(self, enabled: bool, total_runs: int) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.rich = enabled and self.console.is_terminal
        self._bar = None
        if self.rich:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn)

            self._bar = Progress(
                SpinnerColumn(), TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                console=self.console, refresh_per_second=4, transient=False,
            )
            self._bar.start()
            self._overall = self._bar.add_task("[bold]bench runs", total=total_runs, info="")
            self._current = self._bar.add_task("", total=None, info="")

    def stage(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._current, description=text, total=None, completed=0, info="")
        else:
            self.console.print(f"[dim]{text}[/dim]", highlight=False)

    def run_started(self, label: str) -> None:
        if self._bar is not None:
            self._bar.reset(self._current, description=label, total=None, info="starting process")
        else:
            self.console.print(f"… {label}", highlight=False)

    def run_progress(self, done: int, total: int, rows: int) -> None:
        if self._bar is not None:
            self._bar.update(self._current, completed=done, total=total or None, info=f"{rows:,} rows")

    def run_finished(self, line: str, counted: bool = True) -> None:
        if self._bar is not None:
            if counted:
                self._bar.advance(self._overall)
            self._bar.console.print(line, highlight=False)
        else:
            self.console.print(line, highlight=False)

    def log(self, line: str) -> None:
        (self._bar.console if self._bar is not None else self.console).print(line, highlight=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


# --------------------------------------------------------------------------- the Prefect API


class PrefectServer:
    """``python -m fredflow.bench.prefect_server`` for the duration of the bench (or the user's API)."""

    def __init__(self, log_path: Path) -> None:
        self.url: str | None = os.environ.get("PREFECT_API_URL") or None
        self.external = self.url is not None
        self.pid: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._log = log_path

    def __enter__(self) -> "PrefectServer":
        if self.external:
            return self
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        with open(self._log, "w") as err:
            self._proc = subprocess.Popen([sys.executable, "-m", "fredflow.bench.prefect_server"], env=env,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                          start_new_session=True)
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait()
            raise RuntimeError(f"Prefect API did not start; see {self._log}")
        self.url = json.loads(line)["url"]
        self.pid = self._proc.pid
        return self

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
            proc.wait(timeout=30)
        except (subprocess.TimeoutExpired, OSError):
            _kill_group(proc.pid)
            proc.wait()


def _kill_group(pid: int) -> None:
    """Stop a process we started in its own session, and everything it started."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    time.sleep(3)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------- subprocess runs


@dataclass
class ProcResult:
    returncode: int
    wall_s: float
    cpu_s: float
    maxrss_mb: float
    result: dict[str, Any]
    timed_out: bool = False


def run_process(module: str, spec: dict[str, Any], work: Path, name: str, *, env: dict[str, str],
                on_progress: Callable[[int, int, int], None] | None = None,
                timeout: float = RUN_TIMEOUT_S) -> ProcResult:
    """``python -m module spec.json result.json`` in its own session; rusage of its whole tree via ``wait4``."""
    spec_path, result_path, log_path = work / f"{name}.spec.json", work / f"{name}.result.json", work / f"{name}.log"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    result_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", module, str(spec_path), str(result_path)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env, text=True,
                                start_new_session=True)
    timed_out = threading.Event()

    def watchdog() -> None:
        timed_out.set()
        _kill_group(proc.pid)

    timer = threading.Timer(timeout, watchdog)
    timer.daemon = True
    timer.start()

    def read() -> None:
        for line in proc.stdout:
            parts = line.split()
            if on_progress and len(parts) == 4 and parts[0] == "progress":
                try:
                    on_progress(int(parts[1]), int(parts[2]), int(parts[3]))
                except Exception:  # noqa: BLE001 - the display must never break a run
                    pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    timer.cancel()
    reader.join(timeout=5)
    try:  # leftovers of the run's session (there should be none)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        result = json.loads(result_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
        result = {"ok": False, "error": ("timed out" if timed_out.is_set() else
                                         f"exit code {proc.returncode}, no result") + f"; log tail: {tail}"}
    return ProcResult(proc.returncode, wall, usage.ru_utime + usage.ru_stime, round(usage.ru_maxrss / 1024, 1),
                      result, timed_out.is_set())
