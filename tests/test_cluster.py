"""The Dask executor on a real cluster on loopback: a `dask scheduler` and two `dask worker`
processes (CPU, one thread, ``--resources GPU=1``), the daemon as a real subprocess.

One cluster and one daemon serve the tests of the main flow (module fixtures, tests in
file order): a burst, a worker killed mid-job, the scheduler killed and restarted, SIGTERM
with a job in flight. Then ``calibrate --scheduler`` against a local run. Every process is
killed in the fixtures' ``finally``, also when a test fails, and dies with the test
process when the run is interrupted (tests/helpers/children.py). Long jobs are many-plane
stacks of tiny planes with 2-iteration fits, so that a job lasts seconds while the
burst files stay quick.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from autodip_watch.settings.base import ConfigError  # noqa: E402
from autodip_watch.settings.config import Config, parse_config, with_cli_executor  # noqa: E402
from autodip_watch.provenance import read_provenance  # noqa: E402
from autodip_watch.daemon.queue import JobQueue  # noqa: E402
from helpers.children import spawn  # noqa: E402
from helpers.daemon import (TINY_FIT, DaemonProcess, Raw, child_env, cli, free_port,  # noqa: E402
                             output_of, temp_files, wait_for, write_config)

HOST = "127.0.0.1"
#: Planes of a "long" job: a few seconds of 2-iteration fits on one CPU thread.
# Long enough that a job is still running after the `status` subprocess has started
# (a few seconds on a loaded 2-core machine).
LONG_PLANES = 240


# --------------------------------------------------------------------------- configuration

def test_executor_keys_are_validated_with_their_names():
    config = parse_config({"executor": "dask", "scheduler": "gpu-server:8786",
                           "max_in_flight": 3}, Path("."))
    assert (config.executor, config.scheduler, config.max_in_flight) == \
        ("dask", "tcp://gpu-server:8786", 3)
    assert parse_config({"scheduler": "tcp://10.0.0.5:8786"}, Path(".")).executor == "dask"
    assert parse_config({}, Path(".")).executor == "local"
    cases = {
        "executor: must be one of local, dask": {"executor": "gpu"},
        "scheduler: missing; executor \"dask\"": {"executor": "dask"},
        "scheduler: must be a Dask scheduler address": {"scheduler": "http://x"},
        "scheduler: set, but executor is \"local\"": {"executor": "local", "scheduler": "h:1"},
        "max_in_flight: must be at least 0": {"max_in_flight": -1},
        "dask.reconnect_max_seconds: must be at least 1": {"dask": {"reconnect_max_seconds": 0}},
        "dask.timeout: unknown key": {"dask": {"timeout": 3}},
    }
    for expected, document in cases.items():
        with pytest.raises(ConfigError) as error:
            parse_config(document, Path("."))
        assert expected in str(error.value), str(error.value)


def test_command_line_executor_options():
    assert with_cli_executor(Config(), None, None, None) == Config()
    dask = with_cli_executor(Config(), None, "127.0.0.1:8786", 2)
    assert (dask.executor, dask.scheduler, dask.max_in_flight) == ("dask", "tcp://127.0.0.1:8786", 2)
    configured = parse_config({"scheduler": "tcp://a:1"}, Path("."))
    assert with_cli_executor(configured, "local", None, None).executor == "local"
    with pytest.raises(ConfigError, match="--scheduler: missing"):
        with_cli_executor(Config(), "dask", None, None)
    with pytest.raises(ConfigError, match="--scheduler: must be"):
        with_cli_executor(Config(), None, "nonsense", None)


# --------------------------------------------------------------------------- the cluster

def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


class LoopbackCluster:
    """A real scheduler and real workers as subprocesses, on 127.0.0.1 only."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.address = f"tcp://{HOST}:{self.port}"
        self.scheduler: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}
        self.worker_ports = {name: free_port() for name in ("w0", "w1")}
        self.env = {**child_env(), "CUDA_VISIBLE_DEVICES": ""}

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        with open(self.root / log_name, "ab") as handle:
            return spawn([sys.executable, "-m", *args], stdout=handle,
                         stderr=subprocess.STDOUT, env=self.env)

    def start_scheduler(self) -> None:
        self.scheduler = self._spawn(["distributed.cli.dask_scheduler", "--host", HOST, "--port",
                                      str(self.port), "--no-dashboard"], "scheduler.log")
        wait_for(lambda: _port_open(self.port), 60, "the scheduler to listen")

    def kill_scheduler(self) -> None:
        self.scheduler.kill()
        self.scheduler.wait(30)

    def start_worker(self, name: str) -> None:
        self.workers[name] = self._spawn(
            ["distributed.cli.dask_worker", self.address, "--nthreads", "1", "--resources",
             "GPU=1", "--no-dashboard", "--no-nanny", "--host", HOST, "--worker-port",
             str(self.worker_ports[name]), "--name", name, "--preload", "autodip_watch.cluster"],
            f"{name}.log")

    def worker_address(self, name: str) -> str:
        return f"tcp://{HOST}:{self.worker_ports[name]}"

    def worker_running(self, where: str | None) -> str | None:
        """The name of the worker a job's ``worker`` column points at."""
        for name in self.workers:
            if where and where.startswith(self.worker_address(name) + " "):
                return name
        return None

    def kill_worker(self, name: str) -> None:
        process = self.workers.pop(name)
        process.kill()
        process.wait(30)

    def wait_workers_gone(self, timeout: float = 60) -> None:
        """Workers close when their scheduler is gone (Dask has no worker reconnection)."""
        def gone():
            return all(process.poll() is not None for process in self.workers.values())
        wait_for(gone, timeout, "the workers to exit after losing their scheduler")
        self.workers.clear()

    def client(self):
        from distributed import Client

        return Client(self.address, timeout=20, set_as_default=False)

    def wait_workers(self, count: int, timeout: float = 120) -> None:
        with self.client() as client:
            client.wait_for_workers(count, timeout=timeout)

    def executing(self) -> dict[str, list[str]]:
        """Tasks executing on each worker right now."""
        with self.client() as client:
            return client.run(lambda dask_worker: [str(ts.key) for ts in dask_worker.state.executing])

    def stop(self) -> None:
        for process in [*self.workers.values(), self.scheduler]:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(30)

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace")
                                                          .splitlines()[-15:])
                         for path in sorted(self.root.glob("*.log")))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = LoopbackCluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start_scheduler()
        for name in cluster.worker_ports:
            cluster.start_worker(name)
        cluster.wait_workers(2)
        yield cluster
    finally:
        cluster.stop()


class Site:
    """A microscope daemon sending its jobs to the loopback cluster."""

    def __init__(self, root: Path, cluster: LoopbackCluster, tables: str = "",
                 dip: str = "") -> None:
        self.root = root
        self.cluster = cluster
        self.folder = root / "in"
        self.folder.mkdir()
        self.state = root / "state"
        self.config = write_config(
            root / "config.toml", self.state,
            f'[[watch]]\npath = "{self.folder}"\nsettle_seconds = 0.5\n',
            TINY_FIT + dip + "[dask]\nconnect_timeout_seconds = 2\nreconnect_max_seconds = 2\n"
            + tables)
        # Top-level keys go before the tables.
        self.config.write_text(f'executor = "dask"\nscheduler = "{cluster.address}"\n'
                               + self.config.read_text())
        self.raw = Raw()
        self.log = root / "daemon.log"
        self.daemon: DaemonProcess | None = None

    @property
    def queue(self) -> JobQueue:
        return JobQueue(self.state, create=False)

    def jobs(self, paths) -> list:
        wanted = {str(p) for p in paths}
        return [job for job in self.queue.jobs() if job.path in wanted]

    def wait_done(self, paths, timeout: float = 600) -> None:
        def done():
            jobs = self.jobs(paths)
            return len(jobs) == len(list(paths)) and all(job.state == "done" for job in jobs)
        try:
            wait_for(done, timeout, f"{len(list(paths))} job(s) done", self.daemon)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{[(j.id, j.state, j.error) for j in self.queue.jobs()]}"
                                 f"\n{self.cluster.logs()}") from None

    def running_with_progress(self, timeout: float = 120):
        """A running job placed on a worker, a few planes in."""
        def check():
            for job in self.queue.jobs(["running"]):
                if self.cluster.worker_running(job.worker) and (job.plane or 0) >= 2:
                    return job
            return None
        return wait_for(check, timeout, "a job running on a worker with progress", self.daemon)

    def status(self) -> dict:
        from autodip_watch.daemon.status import exit_status

        result = cli("status", "--json", "--config", str(self.config), check=False)
        report = json.loads(result.stdout)
        assert result.returncode == exit_status(report), (result.returncode, report["daemon"])
        return report

    def events(self, name: str) -> list[dict]:
        return [event for event in self.daemon.events() if event.get("event") == name]

    def check_exactly_once(self, raws) -> None:
        """One output per raw file, no temporary files, one `done` per job."""
        for raw in raws:
            siblings = sorted(p.name for p in raw.parent.iterdir()
                              if p.name.startswith(raw.name.split(".")[0] + "."))
            assert siblings == sorted([raw.name, output_of(raw).name]), siblings
        assert temp_files(self.folder) == []
        queue = self.queue
        for job in self.jobs(raws):
            done = [event for event in queue.events(job.id) if event["state"] == "done"]
            assert len(done) == 1, queue.events(job.id)
        assert len({job.path for job in queue.jobs()}) == len(queue.jobs())


@pytest.fixture(scope="module")
def site(cluster, tmp_path_factory):
    site = Site(tmp_path_factory.mktemp("site"), cluster)
    site.daemon = DaemonProcess(site.config, site.log)
    try:
        site.daemon.wait_ready()
        yield site
    finally:
        site.daemon.kill()


# --------------------------------------------------------------------------- the daemon on the cluster

@pytest.mark.slow
def test_a_burst_is_processed_on_both_workers(site, cluster):
    raws = [site.raw.write(site.folder / f"burst{n:02d}.ome.tif", seed=n) for n in range(12)]
    site.wait_done(raws)
    site.check_exactly_once(raws)
    addresses = {cluster.worker_address(name) for name in cluster.worker_ports}
    used = set()
    for job in site.jobs(raws):
        assert job.attempts == 1
        where = cluster.worker_running(job.worker)
        assert where is not None, job.worker
        used.add(where)
        entries = read_provenance(job.output)[0]["entries"]
        assert entries["worker_host"] == socket.gethostname()
        assert entries["worker"] in addresses and entries["device"] == "cpu"
        report = json.loads(cli("queue", "list", "--history", str(job.id), "--config",
                                str(site.config)).stdout)["report"]
        assert report["worker"] == entries["worker"] and report["host"] == socket.gethostname()
    assert used == {"w0", "w1"}

    status = site.status()
    assert status["daemon"]["up"] and status["daemon"]["devices"] == [f"dask {cluster.address}"]
    view = status["cluster"]
    assert view["connected"] and view["scheduler"] == cluster.address
    assert sorted(worker["address"] for worker in view["workers"]) == sorted(addresses)
    assert view["gpus"] == 2 and view["max_in_flight"] == 2
    # Each worker told the daemon its device; batching "auto" groups on CUDA only.
    assert [worker["device"] for worker in view["workers"]] == ["cpu", "cpu"]
    assert view["jobs_per_task"] == 1
    assert {event["jobs_in_task"] for event in site.events("job.submitted")} == {1}
    assert {worker["state"] for worker in view["workers"]} <= {"busy", "idle"}
    text = cli("status", "--config", str(site.config)).stdout
    assert f"cluster: Dask scheduler {cluster.address}, 2 worker(s), 2 GPU(s)" in text
    site.raw.check_unchanged()


@pytest.mark.slow
def test_a_worker_killed_mid_job_still_gives_every_output_once(site, cluster):
    raws = [site.raw.write(site.folder / f"stack{n}.ome.tif", (LONG_PLANES, 32, 32), seed=50 + n,
                           axes="ZYX") for n in range(3)]
    job = site.running_with_progress()
    victim = cluster.worker_running(job.worker)
    status = site.status()
    current = next(item for item in status["current"] if item["id"] == job.id)
    assert current["worker"].startswith(cluster.worker_address(victim))
    assert current["planes"] == LONG_PLANES and current["elapsed_seconds"] >= 0
    cluster.kill_worker(victim)

    site.wait_done(raws)
    site.check_exactly_once(raws)
    survivor = next(name for name in cluster.worker_ports if name != victim)
    finished = site.queue.get(job.id)
    # Dask moved the task to the surviving worker; the queue did not count a failure.
    assert finished.attempts == 1
    assert cluster.worker_running(finished.worker) == survivor
    moves = [event["message"] for event in site.queue.events(job.id) if event["state"] == "running"]
    assert any(cluster.worker_address(victim) in message for message in moves)
    assert any(cluster.worker_address(survivor) in message for message in moves)
    entries = read_provenance(finished.output)[0]["entries"]
    assert entries["worker"] == cluster.worker_address(survivor)
    assert entries["worker_host"] == socket.gethostname()
    site.raw.check_unchanged()

    cluster.start_worker(victim)  # as systemd would
    cluster.wait_workers(2)


@pytest.mark.slow
def test_the_scheduler_killed_and_restarted_loses_nothing(site, cluster):
    raws = [site.raw.write(site.folder / f"during{n}.ome.tif", (LONG_PLANES, 32, 32),
                           seed=70 + n, axes="ZYX") for n in range(2)]
    site.running_with_progress()
    cluster.kill_scheduler()

    # The daemon notices, puts the jobs in flight back in the queue, and says so.
    def unreachable():
        view = site.status()["cluster"]
        return view if view and not view["connected"] else None
    view = wait_for(unreachable, 30, "status to show the scheduler unreachable", site.daemon)
    assert view["scheduler"] == cluster.address and view["error"]
    shown = cli("status", "--config", str(site.config), check=False)
    text = shown.stdout
    assert "cluster unreachable" in text and "files are still watched and queued" in text
    # a monitoring check on `status` alerts: exit 1, the daemon degraded, not unhealthy
    assert shown.returncode == 1 and "DEGRADED: Dask scheduler" in text, text
    wait_for(lambda: not site.queue.jobs(["running"]), 30, "jobs in flight released", site.daemon)
    assert site.events("cluster.lost")

    # Files dropped meanwhile are still taken and queued.
    later = [site.raw.write(site.folder / f"while-down{n}.ome.tif", seed=90 + n) for n in range(3)]
    wait_for(lambda: len(site.jobs(later)) == 3, 30, "files queued while the scheduler is down",
             site.daemon)
    assert all(job.state == "queued" for job in site.jobs(raws + later))
    wait_for(lambda: site.events("cluster.unreachable"), 30, "a failed reconnection logged",
             site.daemon)
    assert site.status()["daemon"]["healthy"]

    # Dask workers close without their scheduler; systemd (here: the test) restarts both.
    cluster.wait_workers_gone()
    cluster.start_scheduler()
    for name in cluster.worker_ports:
        cluster.start_worker(name)
    site.wait_done(raws + later)
    site.check_exactly_once(raws + later)
    for job in site.jobs(raws + later):
        assert job.attempts == 1, (job.path, job.attempts)  # released, never counted
    assert len(site.events("cluster.connected")) >= 2
    wait_for(lambda: (site.status()["cluster"] or {}).get("connected"), 30,
             "status to show the cluster again", site.daemon)
    site.raw.check_unchanged()


@pytest.mark.slow
def test_sigterm_cancels_jobs_in_flight_and_requeues_them(site, cluster):
    cluster.wait_workers(2)
    huge = site.raw.write(site.folder / "huge.ome.tif", (3000, 32, 32), seed=99, axes="ZYX")
    job = site.running_with_progress()
    assert job.path == str(huge)
    code, seconds = site.daemon.stop()
    assert code == 0 and seconds < 15
    requeued = site.queue.get(job.id)
    assert requeued.state == "queued" and requeued.attempts == 0
    assert site.events("daemon.stopped")[-1]["clean"] is True
    # The task stops at its next iteration on the worker (3000 planes would take minutes)
    # and removes its temporary file.
    wait_for(lambda: not any(cluster.executing().values()), 30, "the task to stop on its worker")
    wait_for(lambda: temp_files(site.folder) == [], 30, "the temporary output to be removed")
    assert not output_of(huge).exists()
    assert not site.status()["daemon"]["up"]
    site.raw.check_unchanged()


# --------------------------------------------------------------------------- batching

@pytest.mark.slow
def test_files_of_one_fit_key_go_as_one_task_and_share_a_batch(cluster, tmp_path):
    """Queued a1, b1, a2, broken, a3 with batching on and 4 jobs per task: a1, a2,
    broken and a3 go as one task, whose good files are fitted in one batch of 3 while
    the broken one fails alone; b1 (another plane size) goes as its own task."""
    from helpers.daemon import sha256

    from autodip_watch.pipeline.plan import fit_key

    cluster.wait_workers(2)
    site = Site(tmp_path, cluster, '[batching]\nmode = "on"\njobs_together = 4\n'
                                   'linger_seconds = 30\n', dip="members = 1\n")
    shapes = {"a1": (48, 40), "b1": (64, 64), "a2": (48, 40), "broken": (48, 40),
              "a3": (48, 40)}
    images = {name: site.raw.write(site.folder / f"{name}.ome.tif", shape, seed=i)
              for i, (name, shape) in enumerate(shapes.items())}
    # The broken file loses the end of its pixel data. The watcher records no fit key for
    # a file it cannot read; here it gets the key of its plane size, so that the file
    # fails inside a task of good files.
    broken = images["broken"]
    broken.chmod(0o644)
    broken.write_bytes(broken.read_bytes()[:-200])
    site.raw.hashes[broken] = sha256(broken)
    from autodip_watch.settings.config import load_config
    from autodip_watch.transfer.table import CalibrationTable

    config = load_config(site.config)
    settings = config.denoise_settings(config.watch[0], "auto", CalibrationTable.load())
    keys = {name: fit_key(path, settings) for name, path in images.items()}
    assert keys["broken"] is None and keys["a1"] == keys["a2"] == keys["a3"] != keys["b1"]
    keys["broken"] = keys["a1"]
    queue = JobQueue(site.state)
    for name, path in images.items():  # in this order, as the watcher would have
        info = path.stat()
        queue.enqueue(str(path), info.st_size, info.st_mtime_ns, sha256(path),
                      str(site.folder), fit_key=keys[name])
    queue.close()

    site.daemon = DaemonProcess(site.config, site.log)
    try:
        site.daemon.wait_ready()
        good = [images[name] for name in ("a1", "a2", "a3", "b1")]
        site.wait_done(good)
        wait_for(lambda: site.jobs([broken])[0].state == "quarantined", 60,
                 "the broken file quarantined", site.daemon)
        view = site.status()["cluster"]
        text = cli("status", "--config", str(site.config)).stdout
        site.daemon.stop()
    finally:
        site.daemon.kill()

    site.check_exactly_once(good)
    assert not output_of(broken).exists() and temp_files(site.folder) == []
    failed = site.jobs([broken])[0]
    # Its retry (max_attempts = 2) went alone: no queued file of its key was left.
    assert "truncated" in failed.error and failed.attempts == 2, failed.error
    submissions = [(Path(event["path"]).name, event) for event in site.events("job.submitted")]
    assert [event["jobs_in_task"] for name, event in submissions
            if name == "broken.ome.tif"] == [4, 1]
    submitted = {}
    for name, event in submissions:
        submitted.setdefault(name, event)
    task = submitted["a1.ome.tif"]["task"]
    assert {name for name, event in submitted.items() if event["task"] == task} == \
        {"a1.ome.tif", "a2.ome.tif", "broken.ome.tif", "a3.ome.tif"}
    assert submitted["a1.ome.tif"]["jobs_in_task"] == 4
    assert submitted["b1.ome.tif"]["task"] != task
    assert submitted["b1.ome.tif"]["jobs_in_task"] == 1
    workers = set()
    for name in ("a1", "a2", "a3", "b1"):
        entries = read_provenance(output_of(images[name]))[0]["entries"]
        assert entries["settings.batching"] == "on"
        assert entries["channel.0.largest_batch"] == ("1" if name == "b1" else "3"), name
        if name != "b1":
            workers.add(entries["worker"])
    assert len(workers) == 1  # one task, one worker
    assert view["jobs_per_task"] == 4
    assert "up to 4 job(s) of one fit key per task" in text
    site.raw.check_unchanged()


# --------------------------------------------------------------------------- calibrate

@pytest.mark.slow
def test_calibrate_on_the_cluster_gives_the_local_table(cluster, tmp_path):
    from autodip_watch.calibration.grid import CalibrationGrid
    from autodip_watch.calibration.run import calibrate
    from autodip_watch.calibration.state import CalibrationState
    from helpers.pairs import make_pairs

    cluster.wait_workers(2)
    pairs = make_pairs(tmp_path / "pairs")
    grid = CalibrationGrid(depths=(4,), widths=("16",), skips=(0, 4), max_iterations=4,
                               every=2)
    local = calibrate(pairs, tmp_path / "local.toml", grid, device="cpu", with_lpips=False)
    command = [sys.executable, "-m", "autodip_watch.cli", "calibrate", str(pairs), "--out",
               str(tmp_path / "dask.toml"), "--depths", "4", "--widths", "16", "--skips", "0,4",
               "--max-iterations", "4", "--every", "2", "--no-lpips", "--device", "cpu",
               "--scheduler", cluster.address, "--json"]
    result = subprocess.run(command, env={**child_env(), "CUDA_VISIBLE_DEVICES": ""},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr + cluster.logs()
    report = json.loads(result.stdout)
    assert report["fits_total"] == local.fits_total == 8

    def tables(path: Path) -> dict:
        document = tomllib.loads(path.read_text())
        return {"metrics": document["metrics"], "images": document["images"]}

    assert tables(tmp_path / "dask.toml") == tables(tmp_path / "local.toml")
    provenance = tomllib.loads((tmp_path / "dask.toml").read_text())["provenance"]
    assert provenance["device"] == report["device"] == f"Dask cluster {cluster.address}"
    # Each fit recorded where it ran, as it arrived.
    with CalibrationState(tmp_path / "dask.calibration.sqlite") as state:
        devices = {row[0] for row in state.connection.execute("SELECT device FROM fits")}
    addresses = {cluster.worker_address(name) for name in cluster.worker_ports}
    assert devices and all(any(a in device for a in addresses) for device in devices), devices

    unreachable = subprocess.run(
        [*command[:-3], "--scheduler", f"tcp://{HOST}:{free_port()}", "--restart"],
        env=child_env(), capture_output=True, text=True, timeout=120)
    assert unreachable.returncode == 2 and "--scheduler" in unreachable.stderr
