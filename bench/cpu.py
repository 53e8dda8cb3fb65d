"""Where a benchmark run's CPU went: the service's processes, PostgreSQL's, and the client's (Linux /proc).

    meter = CpuMeter([uvicorn_pid]); meter.start(); ...load...; meter.stop(requests)
    -> {"service": µs per request, "postgres": …, "client": …}

The service is each given process and its children (uvicorn workers); PostgreSQL every server process,
including backends opened meanwhile; the client this process and the children it has waited for (a wrk run).
Elsewhere than Linux every figure is 0.
"""

import os
import time
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` so far (0 once it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, in clock ticks


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*") if Path("/proc").is_dir() else ():
        try:
            ppid = int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
            found[int(entry.name)] = (ppid, entry.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, ValueError, IndexError):
            continue
    return found


def _client_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuMeter:
    def __init__(self, service_pids: list[int]) -> None:
        self.roots = set(service_pids)

    def _groups(self) -> dict[int, str]:
        groups = {}
        for pid, (ppid, cmd) in processes().items():
            if pid in self.roots or ppid in self.roots:
                groups[pid] = "service"
            elif cmd.startswith("postgres:") or cmd.split(" ")[0].endswith("/postgres"):
                groups[pid] = "postgres"
        return groups

    def start(self) -> None:
        self.before = {pid: cpu_seconds(pid) for pid in self._groups()}
        self.client_before = _client_seconds()
        self.started = time.monotonic()
        self.service_busy: list[float] = []

    def stop(self, requests: int) -> dict[str, float]:
        """µs of CPU per request (or resource) since `start()`, by group."""
        used = {"service": 0.0, "postgres": 0.0}
        wall = max(time.monotonic() - self.started, 1e-9)
        busy = []
        for pid, group in self._groups().items():
            spent = cpu_seconds(pid) - self.before.get(pid, 0.0)
            used[group] += spent
            if group == "service" and spent / wall >= 0.01:
                busy.append(round(spent / wall, 2))
        # how busy each service process kept a core, busiest first: [0.98, 0.35] says the keep-alive connections
        # landed unevenly on two workers (the kernel's choice at connect time), not what the code costs
        self.service_busy = sorted(busy, reverse=True)
        used["client"] = _client_seconds() - self.client_before
        return {k: round(1e6 * v / max(requests, 1), 1) for k, v in used.items()}
