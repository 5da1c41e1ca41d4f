"""A sweep's cells as Ray tasks, one per emulation slot (`run_scenario.py S --ray ADDRESS`).

Two emulations on one kernel disturb each other's link rates and CPU shares, so the unit
distributed is the whole cell, and a node offers one slot of the custom resource
`emulation` (`ray start --resources='{"emulation": 1}'`). The driver keeps what a local
sweep keeps: `OUT/cells/<cell>/`, `cell.json`, `sweep.json`, resume and the report.

What travels: to the worker, the cell's resolved scenario, the bytes of the files it
names (traces, `test_data`; the worker's own copy is used where it is the same) and the
run's options; back, the cell's folder as a gzipped tar (at most MAX_FOLDER_BYTES). The
worker runs the cell in a child process (`python -m testbed.experiment.cluster JOBDIR`),
the runner as a local run uses it, so its teardown is the local run's: the child gets
SIGINT when the task is cancelled and SIGTERM when its worker dies (PR_SET_PDEATHSIG), and
a child killed outright is cleaned by the next run's stale sweep on that node.

A cell whose worker or node is lost is submitted again, at most RETRIES times; a node that
cannot run cells (not root, no Mininet) fails the cell with the node's reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import testbed
from testbed.emulation.topology import new_prefix
from testbed.errors import EnvironmentMissing, ScenarioError, TestbedError

RESOURCE = "emulation"  # the custom resource: one per machine that may run a cell
RETRIES = 2  # a cell whose worker or node is lost runs again at most this many times
MAX_FOLDER_BYTES = 256 << 20  # a cell's folder coming back (before compression)
MAX_INPUT_BYTES = 256 << 20  # the files a cell's scenario names, going out
CANCEL_WAIT_S = 120.0  # after Ctrl-C: how long the workers get to tear their cells down
CHILD_STOP_S = 90.0  # a cancelled cell's child: its teardown, before SIGKILL
LOCAL_OBJECT_STORE = 200 << 20  # `--ray local`: the object store (cells' folders pass)
JOBS_DIR = Path(tempfile.gettempdir()) / "deepcod-testbed-cells"  # on each worker
OUTCOME = "outcome.json"


# ------------------------------------------------------------------------ driver side


@dataclass
class Outcome:
    """What a cell's task hands back. status: done, failed (the run's own failure; its
    folder is kept) or unfit (the node cannot run cells: `error` is the node's reason)."""

    status: str
    host: str
    error: str = ""
    gate_failures: tuple[str, ...] = ()
    folder: bytes = b""  # gzipped tar of the cell's results folder
    commit: str = ""
    seconds: float = 0.0


class Cluster:
    """A connection to a Ray cluster, or (`local`, `local:N`) a private one started on
    this machine with N emulation slots (1 by default) and stopped on exit."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.local_slots = _local_slots(address)
        self.temp = ""

    def __enter__(self) -> Cluster:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if not self.local_slots and _token_available():
            os.environ.setdefault("RAY_AUTH_MODE", "token")  # what `ray start` enabled
        try:
            import ray
        except ImportError:
            raise EnvironmentMissing(
                "--ray needs Ray: install the cluster extra (`bash scripts/setup.sh` does)"
            ) from None
        import logging

        try:
            if self.local_slots:
                self.temp = tempfile.mkdtemp(prefix="deepcod-ray-")  # its logs, removed at exit
                ray.init(
                    _temp_dir=self.temp,
                    num_cpus=self.local_slots,
                    resources={RESOURCE: self.local_slots},
                    include_dashboard=False,
                    object_store_memory=LOCAL_OBJECT_STORE,
                    logging_level=logging.ERROR,
                    log_to_driver=False,
                )
            else:
                ray.init(address=self.address, logging_level=logging.ERROR, log_to_driver=False)
        except ConnectionError as exc:
            raise EnvironmentMissing(
                f"--ray {self.address}: no Ray cluster there ({exc}); start its head with "
                "`ray start --head` (docs/scenarios.md, Running a sweep on a cluster)"
            ) from None
        slots = ray.cluster_resources().get(RESOURCE, 0)
        if slots < 1:
            self.__exit__()
            raise EnvironmentMissing(
                f"--ray {self.address}: the cluster offers no `{RESOURCE}` slot: start each "
                f"worker with `ray start --address=HEAD:6379 --resources='{{\"{RESOURCE}\": 1}}'`"
            )
        self.slots = int(slots)
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        ray.shutdown()
        if self.temp:
            shutil.rmtree(self.temp, ignore_errors=True)


def _token_available() -> bool:
    """Whether this machine holds a Ray token (`ray start` makes ~/.ray/auth_token)."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or Path(path).is_file()


def _local_slots(address: str) -> int:
    if address == "local":
        return 1
    if address.startswith("local:"):
        count = address.removeprefix("local:")
        if not count.isdigit() or int(count) < 1:
            raise ScenarioError(f"--ray {address}: allowed: local, local:N (N >= 1) or ADDRESS")
        return int(count)
    return 0


def run_cells(
    cells: list,
    options: dict,
    finish: Callable[[Any, Outcome, int], None],
    say: Callable[[str], None],
) -> None:
    """Run `cells` (testbed.config.sweep.Cell) on the connected cluster; `finish(cell,
    outcome, attempts)` is called on the driver as each one ends, before the next result
    is waited for, so an interruption loses no finished cell. Ctrl-C cancels the tasks
    and waits (CANCEL_WAIT_S) for their workers to tear their topologies down."""
    import ray

    task = ray.remote(_run_cell_task).options(
        resources={RESOURCE: 1}, num_cpus=0, max_retries=0, retry_exceptions=False
    )
    commit = _commit()
    inputs: dict[tuple[str, ...], Any] = {}  # the same files travel once
    pending: dict[Any, tuple[Any, int]] = {}

    def submit(cell, attempt: int) -> None:
        paths = _referenced(cell.scenario)
        if tuple(paths) not in inputs:
            inputs[tuple(paths)] = ray.put(pack_inputs(paths))
        job = {"dirname": cell.dirname, "scenario": cell.scenario.to_dict(), "options": options}
        job["commit"] = commit
        job["command"] = sys.argv  # environment.json's `command`: the driver's
        pending[task.remote(job, inputs[tuple(paths)])] = (cell, attempt)

    for cell in cells:
        submit(cell, 1)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                cell, attempt = pending.pop(ref)
                try:
                    outcome = Outcome(**ray.get(ref))
                except ray.exceptions.RayTaskError as exc:  # the task's own error: final
                    outcome = Outcome("failed", "?", f"{type(exc).__name__}: {_first_line(exc)}")
                except ray.exceptions.RayError as exc:  # its worker or node lost, and the like
                    lost = f"its worker was lost ({type(exc).__name__})"
                    if attempt <= RETRIES:
                        say(f"cell {cell.dirname}: {lost}; running it again ({attempt + 1})")
                        submit(cell, attempt + 1)
                        continue
                    outcome = Outcome("failed", "?", f"{lost} on each of {attempt} attempts")
                if outcome.commit and outcome.commit != commit:
                    say(
                        f"warning: cell {cell.dirname} ran on {outcome.host} at commit "
                        f"{outcome.commit[:12]}, the driver is at {commit[:12]}"
                    )
                finish(cell, outcome, attempt)
    except BaseException:
        _cancel(pending, finish)
        raise


def _cancel(pending: dict, finish: Callable[[Any, Outcome, int], None]) -> None:
    """Cancel what runs (its task raises KeyboardInterrupt, which stops its child as
    Ctrl-C stops a local run) and wait for the workers; a cell that finished meanwhile
    is kept."""
    import ray

    for ref in pending:
        with contextlib.suppress(Exception):
            ray.cancel(ref)
    deadline = time.monotonic() + CANCEL_WAIT_S
    while pending and time.monotonic() < deadline:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        for ref in ready:
            cell, attempt = pending.pop(ref)
            with contextlib.suppress(Exception):
                finish(cell, Outcome(**ray.get(ref)), attempt)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else ""


def _referenced(scenario) -> list[str]:
    """The files and folders a scenario names (absolute, as resolved)."""
    paths = [str(p) for p in (scenario.network.trace or {}).values()]
    if scenario.test_data is not None:
        paths.append(str(scenario.test_data))
    return sorted(set(paths))


def pack_inputs(paths: list[str]) -> bytes:
    """The named files as a tar (member i: the i-th path) with an index of their
    digests; ScenarioError past MAX_INPUT_BYTES."""
    buffer = io.BytesIO()
    index = {}
    total = 0
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i, path in enumerate(paths):
            total += _size(Path(path))
            if total > MAX_INPUT_BYTES:
                raise ScenarioError(
                    f"{path}: the files the scenario names exceed {MAX_INPUT_BYTES >> 20} MiB, "
                    "too much to send with each cell; put them on every worker at the same path"
                )
            index[path] = {"member": str(i), "digest": _digest(Path(path))}
            tar.add(path, arcname=str(i))
        data = json.dumps(index).encode()
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _digest(path: Path) -> str:
    """A file's sha256, or a folder's over its files' relative paths and contents."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path)).encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def unpack_folder(data: bytes, into: Path) -> None:
    """A cell's folder from its worker into `into`: relative regular files and folders
    only (tarfile's `data` filter), at most MAX_FOLDER_BYTES, or TestbedError."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                if (
                    not (m.isfile() or m.isdir())
                    or m.name.startswith("/")
                    or ".." in Path(m.name).parts
                ):
                    raise tarfile.TarError(f"{m.name!r}: not a plain file inside the folder")
            if sum(m.size for m in members) > MAX_FOLDER_BYTES:
                raise TestbedError(f"the cell's folder exceeds {MAX_FOLDER_BYTES >> 20} MiB")
            into.mkdir(parents=True, exist_ok=True)
            tar.extractall(into, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise TestbedError(f"the cell's folder came back unreadable: {exc}") from None


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(testbed.CHECKOUT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


# ------------------------------------------------------------------------ worker side


def node_unfit() -> str:
    """Why this machine cannot run a cell (root, Mininet, its tools), or ""."""
    from testbed.emulation.topology import check_environment

    try:
        check_environment()
    except EnvironmentMissing as exc:
        return str(exc)
    return ""


def _run_cell_task(job: dict, inputs: bytes) -> dict:
    """A Ray task: one cell, in a child process, on this node; its outcome as a dict."""
    host = platform.node()
    started = time.monotonic()
    commit = _commit()

    def outcome(status: str, **fields) -> dict:
        seconds = time.monotonic() - started
        return {"status": status, "host": host, "commit": commit, "seconds": seconds, **fields}

    reason = "" if job["options"].get("loopback") else node_unfit()  # loopback: no Mininet
    if reason:
        return outcome("unfit", error=f"node {host} cannot run cells: {reason}")
    _remove_orphans()
    jobdir = _job_dir()
    prefix = new_prefix()  # the child's topology's: whatever ends it, removed below
    try:
        job = dict(job, scenario=_local_inputs(job["scenario"], inputs, jobdir / "inputs"))
        job["prefix"] = prefix
        (jobdir / "job.json").write_text(json.dumps(job))
        with open(jobdir / "cell.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "testbed.experiment.cluster", str(jobdir)],
                cwd=testbed.CHECKOUT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C reaches it through the task
                preexec_fn=_die_with_parent,
            )
            try:
                _wait_child(proc)
            finally:
                if not job["options"].get("loopback"):
                    _remove_remains(prefix)
        try:
            result = json.loads((jobdir / OUTCOME).read_text())
        except (OSError, json.JSONDecodeError):
            tail = (jobdir / "cell.log").read_text(errors="replace").strip().splitlines()[-3:]
            result = {
                "status": "failed",
                "error": f"the cell's process exited {proc.returncode}: " + " | ".join(tail),
            }
        folder = jobdir / "out"
        if folder.is_dir():
            result["folder"] = pack_folder(folder)
        return outcome(**result)
    finally:
        shutil.rmtree(jobdir, ignore_errors=True)
        with contextlib.suppress(OSError):
            JOBS_DIR.rmdir()  # the last cell on this node leaves nothing behind


def _remove_remains(prefix: str) -> None:
    """What the child's run left (a signal inside Mininet's build can leave a link that
    its teardown does not know): removed by its prefix, as the stale sweep would."""
    from testbed.emulation import stale

    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    marked = (stale.STATE_DIR / f"{prefix}.json").exists() or stale.run_processes(prefix)
    if marked or f": {prefix}" in links:
        stale.clean(prefix)


def _job_dir() -> Path:
    """A fresh folder under JOBS_DIR, named by this worker's pid (see _remove_orphans);
    another task may remove an empty JOBS_DIR meanwhile: made again."""
    for _ in range(5):
        JOBS_DIR.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=JOBS_DIR))
    raise TestbedError(f"cannot make a folder under {JOBS_DIR}")


def _wait_child(proc: subprocess.Popen) -> None:
    """Until the child exits; a cancel (KeyboardInterrupt in this task) or SIGTERM is
    passed on as SIGINT, and the child's teardown is waited for."""
    try:
        while proc.poll() is None:
            time.sleep(0.2)  # short sleeps: a cancel lands between them
    except BaseException:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(CHILD_STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def _die_with_parent() -> None:
    """In the child: SIGTERM (the runner's teardown path) when the worker dies."""
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _remove_orphans() -> None:
    """Job folders of tasks whose worker was killed (named by its pid)."""
    if not JOBS_DIR.is_dir():
        return
    for path in JOBS_DIR.iterdir():
        pid = path.name.split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)


def _local_inputs(scenario: dict, inputs: bytes, into: Path) -> dict:
    """The scenario with each named file pointing at this node's copy: its own where it
    holds the same bytes at the same path (results then name the same paths as on the
    driver), else the copy that came with the cell."""
    with tarfile.open(fileobj=io.BytesIO(inputs), mode="r:") as tar:
        index_file = tar.extractfile("index.json")
        index = json.loads(index_file.read()) if index_file else {}
        moved = {}
        for path, entry in index.items():
            if Path(path).exists() and _digest(Path(path)) == entry["digest"]:
                continue
            members = [
                m
                for m in tar.getmembers()
                if m.name == entry["member"] or m.name.startswith(entry["member"] + "/")
            ]
            tar.extractall(into, members=members, filter="data")
            moved[path] = str(into / entry["member"])
    if not moved:
        return scenario
    scenario = json.loads(json.dumps(scenario))
    trace = scenario.get("network", {}).get("trace") or {}
    for direction, path in trace.items():
        trace[direction] = moved.get(path, path)
    if "test_data" in scenario:
        scenario["test_data"] = moved.get(scenario["test_data"], scenario["test_data"])
    return scenario


def pack_folder(folder: Path) -> bytes:
    """A cell's results folder as a gzipped tar; TestbedError past MAX_FOLDER_BYTES."""
    size = _size(folder)
    if size > MAX_FOLDER_BYTES:
        raise TestbedError(
            f"the cell's folder is {size >> 20} MiB, over the {MAX_FOLDER_BYTES >> 20} MiB that "
            "travel back to the driver (a long --capture?)"
        )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    return buffer.getvalue()


def cell_main(jobdir: Path) -> int:
    """The child: run the cell as a local sweep runs it; its outcome in OUTCOME."""
    from testbed.cleanup import Terminated, honour_sigint
    from testbed.config.scenario import parse_scenario
    from testbed.experiment import runner

    honour_sigint()
    job = json.loads((jobdir / "job.json").read_text())
    sys.argv = list(job.get("command") or sys.argv)  # what environment.json records
    if job.get("prefix"):  # the task's, so that it can remove what a killed run leaves
        from testbed.emulation import topology

        topology.new_prefix = lambda: job["prefix"]
    result: dict = {"status": "done"}
    try:
        scenario = parse_scenario(job["scenario"], jobdir / "scenario.yaml")
        options = {k: v for k, v in job["options"].items() if k != "progress"}
        run = runner.run(scenario, jobdir / "out", progress=False, **options)
        result["gate_failures"] = list(run.gate_failures)
        if run.partial:  # as a local sweep: its results kept, marked partial
            result.update(status="failed", error=f"the run did not finish: {run.partial}")
    except EnvironmentMissing as exc:
        result = {"status": "unfit", "error": f"node {platform.node()} cannot run cells: {exc}"}
    except TestbedError as exc:
        result = {"status": "failed", "error": str(exc)}
    except KeyboardInterrupt:
        return 130
    except Terminated:
        return 143
    (jobdir / OUTCOME).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(cell_main(Path(sys.argv[1])))
