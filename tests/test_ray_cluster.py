"""A real two-node Ray cluster on this machine, started with the README's own commands
(``ray start --head``, then ``ray start --address`` for the second node, one CPU each):
``--driver ray`` runs trials on both nodes, and each node fetches the problem (the trained
supernet and the data) from the object store once, not once per trial."""
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
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


class Cluster:
    """The README's head and second node on this machine (127.0.0.1, a free port, 1 CPU each),
    token authentication on, as the README advises for a real cluster: one token for the head,
    the second node and the search (a ~/.ray/auth_token that an earlier local Ray wrote would
    otherwise make the head demand a token the second node does not send)."""

    def __init__(self):
        import secrets

        self.port = _free_port()
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.env.pop("RAY_ADDRESS", None)
        self.env.pop("NAS_DATA", None)
        self.head, self.node, self.search, self.stop = readme_cluster_commands()
        self.node_pids: set = set()  # the processes the second `ray start` left running

    def local(self, cmd: str):
        argv = shlex.split(cmd.replace("HEAD:6379", f"127.0.0.1:{self.port}").replace("--port=6379",
                                                                                      f"--port={self.port}"))
        if argv[:2] == ["ray", "start"]:
            argv = [a for a in argv if not a.startswith("--num-cpus")] + ["--num-cpus=1",
                                                                          "--node-ip-address=127.0.0.1"]
        return argv

    def __enter__(self):
        for cmd in (self.head, self.node):
            before = _pids()
            r = subprocess.run(self.local(cmd), env=self.env, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr[-2000:]
            if cmd is self.node:
                self.node_pids = _pids() - before
        return self

    def __exit__(self, *exc):
        subprocess.run(shlex.split(self.stop), env=self.env, capture_output=True, timeout=120)

    def search_argv(self, out: Path, *extra: str):
        argv = self.local(self.search)
        argv = [sys.executable, str(ROOT / "search.py")] + [a for a in argv[2:] if a not in ("--budget",)]
        i = argv.index("300MFLOPs")  # the README's budget: a tiny one for the tiny space here
        argv[i:i + 1] = ["--budget", "8.5MFLOPs"]
        return argv + ["--out", str(out), *TINY, *extra]

    def kill_node(self) -> int:
        """SIGKILL the second node: its raylet, log monitor and every process below them (its
        Ray workers, a trial among them).  Returns how many processes were killed."""
        victims = set(self.node_pids)
        while True:
            more = {p for p, pp in _parents().items() if pp in victims} - victims
            if not more:
                break
            victims |= more
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(victims)


def _parents() -> dict:
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                out[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def _pids() -> set:
    return set(_parents())


@pytest.mark.slow  # about a minute and a half; .ci/run runs it
def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'plugnas[ray]')")
    with Cluster() as c:
        r = subprocess.run(c.search_argv(tmp_path / "run"), env=c.env, cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    per_node = summary["driver"]["per_node"]
    assert len(per_node) == 2, per_node  # trials ran on both nodes
    assert sum(n["trials"] for n in per_node.values()) == 8
    assert all(n["trials"] >= 1 and n["problem_fetches"] == 1 for n in per_node.values()), per_node
    assert summary["trials"] == 8


@pytest.mark.slow  # about two minutes (Ray takes some seconds to declare a node dead); .ci/run runs it
def test_a_node_killed_mid_run_loses_no_trial(tmp_path):
    """SIGKILL of the second node while both nodes run trials: the trial it was running is run
    again (Tune's retry, or the driver's rescue once Tune's retries hit the dead node too), the
    search ends normally, and every trial is recorded exactly once."""
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'plugnas[ray]')")
    run, n = tmp_path / "run", 24
    with Cluster() as c:
        argv = c.search_argv(run, "--trials", str(n))  # the later --trials wins over TINY's
        proc = subprocess.Popen(argv, env=c.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        try:
            log = run / "trials.jsonl"
            deadline = time.time() + 400
            # both nodes have fetched the problem and are running trials once two have finished
            while time.time() < deadline and proc.poll() is None and (
                    not log.exists() or len(log.read_text().splitlines()) < 2):
                time.sleep(0.2)
            assert proc.poll() is None, "the search ended before the node could be killed: " + proc.stdout.read()[-2000:]
            assert c.kill_node() >= 2
            out, _ = proc.communicate(timeout=500)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, out[-3000:]
    records = [json.loads(ln) for ln in (run / "trials.jsonl").read_text().splitlines()]
    assert sorted(r["trial"] for r in records) == list(range(n))  # every trial once, none lost
    summary = json.loads((run / "summary.json").read_text())
    assert summary["trials"] == n
    d = summary["driver"]
    assert d["retried"] + d["rescued"] >= 1, d  # the killed node's trial was run again
    rescued = [r for r in records if r["message"].startswith("scored in the driver process")]
    assert len(rescued) == d["rescued"], rescued
    assert all(r["state"] != "failed" for r in records), [r.get("message") for r in records if r["state"] == "failed"]
