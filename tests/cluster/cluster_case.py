"""A real dask scheduler and workers on 127.0.0.1, started as the command-line programs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DASK = str(Path(sys.executable).parent / "dask")


@dataclass
class Cluster:
    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)

    def add_worker(self, name: str) -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [DASK, "worker", self.address, "--nthreads", "1", "--nworkers", "1"]
        cmd += ["--name", name, "--no-dashboard", "--host", "127.0.0.1"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.workers.append(proc)
        return proc

    def wait_for_workers(self, n: int, timeout: float = 60) -> None:
        from distributed import Client

        with Client(self.address, timeout="20s") as client:
            client.wait_for_workers(n, timeout=timeout)

    def close(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def start_cluster(root: Path, n_workers: int) -> Cluster:
    """A scheduler on a free port of 127.0.0.1 and ``n_workers`` one-thread workers."""
    root.mkdir(parents=True, exist_ok=True)
    file = root / "scheduler.json"
    cmd = [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
    cmd += ["--scheduler-file", str(file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not file.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the dask scheduler did not start")
        time.sleep(0.2)
    import json

    time.sleep(0.2)
    address = json.loads(file.read_text())["address"]
    cluster = Cluster(address, proc)
    for k in range(n_workers):
        cluster.add_worker(f"w{k}")
    cluster.wait_for_workers(n_workers)
    return cluster
