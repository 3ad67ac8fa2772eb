"""Two torchrun agents, one per "node", rendezvous through c10d (``launch/torchrun.sh --hosts A,B --node-rank R``)
and run a 2-node gloo job: node ranks, master, world size and a collective across the nodes are checked.

The nodes are two network namespaces joined by a veth pair (root; each node its own address and network stack,
so a wrong advertised address fails as it would on a cluster) or two loopback addresses (anyone).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from two_nodes import loopback_nodes, netns_nodes, netns_reason, start_agents, wait_all  # noqa: E402

PROBE = Path(__file__).parent / "rdzv_probe.py"
LINE = re.compile(r"rank=(\d+) node_rank=(\d+) nnodes=(\d+) local_rank=(\d+) world_size=(\d+) master=(\S+) "
                  r"node_addr=(\S+) allreduce=(\S+)")


def two_nodes(kind: str):
    if kind == "netns":
        reason = netns_reason()
        if reason:
            pytest.skip(f"{reason}; the loopback variant still runs")
        return netns_nodes()
    return loopback_nodes()


def rank_lines(log: Path) -> list[tuple]:
    return [m.groups() for m in map(LINE.search, log.read_text(errors="replace").splitlines()) if m]


@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["netns", "loopback"])
def test_two_agents_rendezvous_c10d(tmp_path, kind):
    port = 31000 + os.getpid() % 1000 + (0 if kind == "netns" else 500)
    with two_nodes(kind) as nodes:
        procs = start_agents(nodes, port, ["python", str(PROBE)], log_dir=tmp_path)
        codes = wait_all(procs, timeout=240)
        logs = [(tmp_path / f"node{r}.log").read_text(errors="replace") for r in (0, 1)]
        assert codes == [0, 0], f"agents exited {codes}\n--- node0\n{logs[0][-3000:]}\n--- node1\n{logs[1][-3000:]}"
    for node in (0, 1):
        lines = rank_lines(tmp_path / f"node{node}.log")
        print(f"node {node} ({nodes.kind} {nodes.addrs[node]}):", *lines, sep="\n  ")
        assert len(lines) == 1, logs[node][-3000:]
        rank, node_rank, nnodes, local_rank, world, master, node_addr, total = lines[0]
        # node ranks follow --node-rank (the hosts are given in address order), one rank per node
        assert (int(rank), int(node_rank), int(nnodes), int(local_rank), int(world)) == (node, node, 2, 0, 2)
        assert master == nodes.addrs[0], "the workers' master is the first host"
        if nodes.kind == "netns":  # each rank really ran on its own node
            assert node_addr == nodes.addrs[node]
        assert float(total) == 3.0  # 1 + 2 summed across the two nodes


def test_node_rank_outside_the_host_list_is_an_error():
    import subprocess

    from two_nodes import TORCHRUN_SH, agent_env

    for bad in ("2", "-1", "one"):
        proc = subprocess.run(["bash", str(TORCHRUN_SH), "--hosts", "a,b", "--node-rank", bad, "--", "python", "x.py"],
                              capture_output=True, text=True, env=agent_env(29999, PYTHON="echo"), timeout=60)
        assert proc.returncode == 2, proc
        assert f"--node-rank {bad} is not one of 0..1 (the positions in --hosts a,b)" in proc.stderr
