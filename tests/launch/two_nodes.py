"""Two "nodes" on one machine for multi-node launch tests: two network namespaces joined by a veth pair (each
node its own network stack and address, as root), or two loopback addresses (127.0.0.2 / 127.0.0.3, anyone).

Namespaces are the faithful one: a node that advertises a wrong address (its hostname, 127.0.0.1, the other
node's loopback) cannot be reached from the other node, exactly as on a cluster. Each namespace's end of the
veth is named ``nsub0``, so ``GLOO_SOCKET_IFNAME=nsub0`` picks the inter-node link on both (as
``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME`` pick the fabric on a real cluster). The test creates and
removes them; all traffic stays on this machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).parents[2]
TORCHRUN_SH = REPO / "launch" / "torchrun.sh"
PROBE = Path(__file__).parent / "rdzv_probe.py"
_PROBE_LINE = re.compile(r"rank=(?P<rank>\d+) node_rank=(?P<node_rank>\d+) nnodes=(?P<nnodes>\d+) "
                         r"local_rank=(?P<local_rank>\d+) world_size=(?P<world_size>\d+) master=(?P<master>\S+) "
                         r"node_addr=(?P<node_addr>\S+) run_id=(?P<run_id>\S+) allreduce=(?P<allreduce>\S+)")


def probe_lines(text: str) -> list[dict]:
    """The lines rdzv_probe.py printed, as dicts (ints where the field is a count or rank)."""
    found = []
    for match in filter(None, map(_PROBE_LINE.search, text.splitlines())):
        row = match.groupdict()
        found.append({k: int(v) if k in ("rank", "node_rank", "nnodes", "local_rank", "world_size") else v
                      for k, v in row.items()})
    return found


@dataclass
class Nodes:
    kind: str
    addrs: tuple[str, str]
    prefixes: tuple[list[str], list[str]]
    """Command prefix that runs a process "on" node 0 / node 1."""
    env: dict = field(default_factory=dict)
    names: tuple[str, ...] = ()
    """Namespace names (netns only)."""

    def pids(self, node: int) -> list[int]:
        """Every process running on a node (netns only: the namespace's processes)."""
        out = subprocess.run(["ip", "netns", "pids", self.names[node]], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]


def netns_reason() -> str | None:
    """None when this process may create network namespaces, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"nsubprobe{os.getpid() % 100000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


@contextlib.contextmanager
def netns_nodes(subnet: int | None = None):
    """Two namespaces ``nsub<pid>a/b`` at 10.<subnet>.0.1 / .2, removed on exit (with any process left in them)."""
    tag = f"nsub{os.getpid() % 100000}"
    subnet = subnet if subnet is not None else 100 + os.getpid() % 100
    names = (f"{tag}a", f"{tag}b")
    addrs = (f"10.{subnet}.0.1", f"10.{subnet}.0.2")
    try:
        for name in names:
            _ip("netns", "add", name)
        _ip("link", "add", f"{tag}va", "type", "veth", "peer", "name", f"{tag}vb")
        for name, end, addr in zip(names, ("va", "vb"), addrs):
            _ip("link", "set", f"{tag}{end}", "netns", name)
            _ip("-n", name, "link", "set", f"{tag}{end}", "name", "nsub0")
            _ip("-n", name, "addr", "add", f"{addr}/24", "dev", "nsub0")
            _ip("-n", name, "link", "set", "nsub0", "up")
            _ip("-n", name, "link", "set", "lo", "up")
        nodes = Nodes("netns", addrs, tuple(["ip", "netns", "exec", n] for n in names),
                      {"GLOO_SOCKET_IFNAME": "nsub0"}, names)
        yield nodes
    finally:
        for name in names:
            out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
            for pid in out.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@contextlib.contextmanager
def loopback_nodes():
    yield Nodes("loopback", ("127.0.0.2", "127.0.0.3"), ([], []))


def agent_env(port: int, **extra: str) -> dict:
    """The environment of a torchrun.sh agent: this interpreter first on PATH, no SLURM allocation."""
    import sys

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra}
    for var in [v for v in env if v.startswith("SLURM_")]:
        env.pop(var)
    return env


def start_agents(nodes: Nodes, port: int, command: list[str], *, log_dir: Path, nproc: int = 1,
                 hosts: tuple[str, str] | None = None, **extra: str) -> list[subprocess.Popen]:
    """``launch/torchrun.sh --hosts A,B --node-rank R -- <command>`` on both nodes, each its own session (so a
    test can kill one node's whole process tree). Output to ``<log_dir>/node<R>.log``."""
    hosts = hosts or nodes.addrs
    procs = []
    for rank in (0, 1):
        log = open(log_dir / f"node{rank}.log", "w")
        procs.append(subprocess.Popen(
            [*nodes.prefixes[rank], "bash", str(TORCHRUN_SH), "--nproc", str(nproc), "--hosts", ",".join(hosts),
             "--node-rank", str(rank), "--", *command],
            stdout=log, stderr=subprocess.STDOUT, env=agent_env(port, **nodes.env, **extra), cwd=REPO,
            start_new_session=True))
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(deadline - time.monotonic(), 1)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
