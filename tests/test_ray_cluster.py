"""A real two-node Ray cluster on this machine, started with the README's own commands
(``ray start --head``, then ``ray start --address`` for the second node, one CPU each):
``--driver ray`` runs trials on both nodes, and each node fetches the problem (the trained
supernet and the data) from the object store once, not once per trial."""
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--data", "digits", "--quiet", "--batch-size", "128", "--seed", "4", "--estimator", "supernet", "--epochs",
        "1", "--verdict-pairs", "0", "--export", "none", "--trials", "8",
        "--ops", "skip_connect,max_pool_3x3,sep_conv_3x3,dil_conv_3x3,do_conv_3x3", "--fusions", "sum",
        "--space-opt", "channels=8", "--space-opt", "cells=3", "--space-opt", "supernet_channels=4",
        "--space-opt", "supernet_cells=2"]


def readme_cluster_commands():
    """The commands of the README's cluster block (between its ray-cluster markers)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- ray-cluster -->\s*```\n(.*?)```", text, re.S)
    assert block, "README.md lost its ray-cluster block"
    return [ln.split("#")[0].strip() for ln in block.group(1).splitlines() if ln.split("#")[0].strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_readme_block_is_what_this_test_runs():
    cmds = readme_cluster_commands()
    assert [c.split()[:2] for c in cmds] == [["ray", "start"], ["ray", "start"], ["python", "search.py"],
                                            ["ray", "stop"]], cmds
    assert "--head" in cmds[0] and "--address=HEAD:6379" in cmds[1]
    assert "--driver ray" in cmds[2] and "address=HEAD:6379" in cmds[2]


@pytest.mark.slow  # about a minute and a half; .ci/run runs it
def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'plugnas[ray]')")
    port = _free_port()
    import secrets

    # token authentication on, as the README advises for a real cluster: one token for the head,
    # the second node and the search (a ~/.ray/auth_token that an earlier local Ray wrote would
    # otherwise make the head demand a token the second node does not send)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    env.pop("NAS_DATA", None)

    def local(cmd: str):  # the README's command, on this machine: 127.0.0.1, a free port, 1 CPU per node
        argv = shlex.split(cmd.replace("HEAD:6379", f"127.0.0.1:{port}").replace("--port=6379", f"--port={port}"))
        if argv[:2] == ["ray", "start"]:
            argv = [a for a in argv if not a.startswith("--num-cpus")] + ["--num-cpus=1",
                                                                          "--node-ip-address=127.0.0.1"]
        return argv

    head, node, search, stop = readme_cluster_commands()
    try:
        for cmd in (head, node):
            r = subprocess.run(local(cmd), env=env, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr[-2000:]
        argv = local(search)
        argv = [sys.executable, str(ROOT / "search.py")] + [a for a in argv[2:] if a not in ("--budget",)]
        i = argv.index("300MFLOPs")  # the README's budget: a tiny one for the tiny space here
        argv[i:i + 1] = ["--budget", "8.5MFLOPs"]
        argv += ["--out", str(tmp_path / "run"), *TINY]
        r = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    finally:
        subprocess.run(shlex.split(stop), env=env, capture_output=True, timeout=120)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    per_node = summary["driver"]["per_node"]
    assert len(per_node) == 2, per_node  # trials ran on both nodes
    assert sum(n["trials"] for n in per_node.values()) == 8
    assert all(n["trials"] >= 1 and n["problem_fetches"] == 1 for n in per_node.values()), per_node
    assert summary["trials"] == 8
