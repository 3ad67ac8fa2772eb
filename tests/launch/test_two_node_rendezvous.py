"""Two torchrun agents, one per "node", rendezvous through c10d (``launch/torchrun.sh --hosts A,B --node-rank R``)
and run a 2-node gloo job: node ranks, master, world size, rendezvous id and a collective across the nodes.

The nodes are two network namespaces joined by a veth pair (root; each node its own address and network stack,
so a wrong advertised address fails as it would on a cluster) or two loopback addresses (anyone).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from two_nodes import (PROBE, TORCHRUN_SH, agent_env, loopback_nodes, netns_nodes, netns_reason,  # noqa: E402
                       probe_lines, start_agents, wait_all)


def two_nodes(kind: str):
    if kind == "netns":
        reason = netns_reason()
        if reason:
            pytest.skip(f"{reason}; the loopback variant still runs")
        return netns_nodes()
    return loopback_nodes()


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
        lines = probe_lines(logs[node])
        print(f"node {node} ({nodes.kind} {nodes.addrs[node]}):", *lines, sep="\n  ")
        assert len(lines) == 1, logs[node][-3000:]
        got = lines[0]
        # node ranks follow --node-rank (the hosts are given in address order), one rank per node
        assert [got[k] for k in ("rank", "node_rank", "nnodes", "local_rank", "world_size")] == [node, node, 2, 0, 2]
        assert got["master"] == nodes.addrs[0], "the workers' master is the first host"
        if nodes.kind == "netns":  # each rank really ran on its own node
            assert got["node_addr"] == nodes.addrs[node]
        assert got["run_id"] == f"nemo-subnet-{nodes.addrs[0]}"
        assert float(got["allreduce"]) == 3.0  # 1 + 2 summed across the two nodes


def test_node_rank_outside_the_host_list_is_an_error():
    for bad in ("2", "-1", "one"):
        proc = subprocess.run(["bash", str(TORCHRUN_SH), "--hosts", "a,b", "--node-rank", bad, "--", "python", "x.py"],
                              capture_output=True, text=True, env=agent_env(29999, PYTHON="echo"), timeout=60)
        assert proc.returncode == 2, proc
        assert f"--node-rank {bad} is not one of 0..1 (the positions in --hosts a,b)" in proc.stderr
