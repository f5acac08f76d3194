"""Cluster deployment: cluster.yaml validates offline, and jobs run on a real two-node Ray cluster.

The two nodes are `ray start` processes on this machine (a head and a worker joining it), driven
with the real `ray job submit --working-dir`, as a user would drive an AWS cluster.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def validate(cfg: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_validates_offline():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    prepared = validate(cfg)
    types = prepared["available_node_types"]
    assert {"head", "gpu_1x", "gpu_8x"} <= set(types)
    assert types["gpu_1x"]["min_workers"] == 0 and types["gpu_8x"]["max_workers"] >= 1  # autoscaled
    # the head schedules and serves but runs no training, data or trial work
    assert types["head"]["resources"] == {"CPU": 0}
    assert any("--num-cpus=0" in c for c in prepared["head_start_ray_commands"])
    # two roles: the head keeps the autoscaler's rights, the workers get S3
    profiles = {name: t["node_config"]["IamInstanceProfile"]["Name"] for name, t in types.items()}
    assert profiles == {"head": "alae-ray-head", "gpu_1x": "alae-ray-worker", "gpu_8x": "alae-ray-worker"}
    # a pinned Ray 2.60 image for Python 3.11, the project installed into it
    docker = prepared["docker"]
    assert docker["head_image"].startswith("rayproject/ray:2.60.0-py311") and "gpu" in docker["worker_image"]
    assert any("pip install -e ~/alae-ray" in c for c in prepared["setup_commands"])
    # multi-node NCCL over EFA on the 8-GPU nodes
    p4d = types["gpu_8x"]
    assert [i["InterfaceType"] for i in p4d["node_config"]["NetworkInterfaces"]] == ["efa"] * 4
    assert "-e FI_PROVIDER=efa" in p4d["docker"]["worker_run_options"]


def test_every_file_the_cluster_setup_refers_to_exists():
    import json
    import re

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    commands = [*cfg.get("setup_commands", []), *cfg.get("head_start_ray_commands", [])]
    for t in cfg["available_node_types"].values():
        commands += t.get("worker_setup_commands", [])
    mounted = {remote: ROOT / local for remote, local in cfg["file_mounts"].items()}
    referred = set()
    for command in commands:
        for remote, rel in re.findall(r"(~/alae-ray)/?([\w./-]*)", command):
            referred.add(mounted[remote] / rel)
    assert referred and all(path.exists() for path in referred), referred
    for name in ("submit_train.sh", "submit_tune.sh", "cluster_token.sh", "install_efa.sh", "iam/create.sh"):
        assert os.access(ROOT / "deploy" / name, os.X_OK), name
    policies = {w: json.loads((ROOT / "deploy" / "iam" / f"{w}-policy.json").read_text()) for w in ("head", "worker")}
    actions = {w: {a for st in p["Statement"] for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])}
               for w, p in policies.items()}
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "iam:PassRole"} <= actions["head"]
    assert all(a.startswith("s3:") for a in actions["worker"])


@pytest.mark.parametrize("breakage", ["bad_type", "unknown_head", "unknown_key"])
def test_broken_cluster_yaml_is_rejected(breakage):
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    if breakage == "bad_type":
        cfg["available_node_types"]["gpu_1x"]["max_workers"] = "eight"
    elif breakage == "unknown_head":
        cfg["head_node_type"] = "gpu_16x"
    else:
        cfg["max_wokers"] = 3
    with pytest.raises(Exception):
        validate(cfg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory):
    """A head (3 CPUs) and a worker node (3 CPUs) on loopback; the dashboard takes job submissions."""
    tmp = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs, dash = free_port(), free_port()
    ray = str(BIN / "ray")

    def own_ports() -> list[str]:
        # Every agent on its own free port: Ray's fixed defaults (52365, ...) clash with any other
        # Ray on the machine, and the job agent then never comes up.
        names = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                 "metrics-export-port", "ray-client-server-port")
        return [f"--{n}={free_port()}" for n in names]

    # Short temp dirs (Ray's socket paths must fit in 107 characters), one per node: a shared one
    # would let the worker node's runtime-env agent delete the job's working directory (its own copy
    # of the same package) under the driver on the head when that node's last task using it ends.
    temp_dir, worker_dir = Path("/tmp") / f"ray-{gcs}", Path("/tmp") / f"ray-{gcs}-w"
    head = subprocess.run([ray, "start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1",
                           "--num-cpus=3", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                           f"--dashboard-port={dash}", f"--temp-dir={temp_dir}", "--disable-usage-stats", *own_ports()],
                          env=env, capture_output=True, text=True, timeout=180)
    assert head.returncode == 0, head.stderr[-2000:]
    worker = subprocess.run([ray, "start", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1",
                             "--num-cpus=3", f"--temp-dir={worker_dir}", "--disable-usage-stats", *own_ports()],
                            env=env, capture_output=True, text=True, timeout=180)
    try:
        assert worker.returncode == 0, worker.stderr[-2000:]
        yield {"address": f"http://127.0.0.1:{dash}", "gcs": f"127.0.0.1:{gcs}", "env": env, "tmp": tmp}
    finally:
        stop_cluster(gcs, temp_dir, worker_dir)


def stop_cluster(gcs_port: int, *temp_dirs: Path) -> None:
    """Stop this cluster's processes only (`ray stop` would kill every Ray on the machine)."""
    import psutil

    marks = (*map(str, temp_dirs), f"127.0.0.1:{gcs_port}", f"--gcs_server_port={gcs_port}")
    procs = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.pid != os.getpid() and any(m in cmd for m in marks):
            procs.append(p)
    for p in procs:
        p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=20)
    for p in alive:
        p.kill()
    for d in temp_dirs:
        shutil.rmtree(d, ignore_errors=True)


def submit(cluster, *entrypoint: str, timeout: float = 900) -> str:
    """`ray job submit --working-dir` a copy of the project; returns the job's logs once it succeeded."""
    env = {**cluster["env"], "RAY_ADDRESS": cluster["address"]}
    for _ in range(20):  # a fresh head's job agent takes a while to come up
        out = subprocess.run([str(BIN / "ray"), "job", "submit", "--working-dir", str(ROOT),
                              "--runtime-env", str(ROOT / "deploy" / "runtime_env.yaml"), "--", *entrypoint],
                             env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        if "No available agent" not in out.stdout + out.stderr:
            break
        time.sleep(3)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if "Error" in line or "error:" in line]
    assert out.returncode == 0, ("\n".join(errors[-10:]), out.stdout[-3000:], out.stderr[-1000:])
    assert "succeeded" in (out.stdout + out.stderr).lower()  # "Job ... succeeded"
    return out.stdout


def cluster_nodes(cluster) -> set[str]:
    code = ("import ray, json; ray.init(address='%s'); "
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))" % cluster["gcs"])
    out = subprocess.run([sys.executable, "-c", code], env=cluster["env"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.ray
@pytest.mark.e2e
def test_training_job_runs_on_both_nodes(two_node_cluster):
    tmp = two_node_cluster["tmp"]
    storage, cache = tmp / "runs", tmp / "cache"
    # Two workers of 2 CPUs cannot share a 3-CPU node: one lands on each node.
    submit(two_node_cluster, "env", f"ALAE_RAY_CACHE={cache}", sys.executable, "-m", "alae_ray.cli",
           "train", "--workers", "2", "--cpus-per-worker", "2", "--max-kimg", "0.128",
           "--tick-kimg", "0.032", "--checkpoint-kimg", "0.064", "--storage", str(storage), "--name", "job")
    run_dir = storage / "job"
    checkpoints = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert checkpoints and (checkpoints[-1] / "state.safetensors").is_file()
    progress = json.loads((checkpoints[-1] / "progress.json").read_text())
    assert progress["images_seen"] == 128
    placement = json.loads((run_dir / "artifacts" / "workers.json").read_text())
    assert [w["rank"] for w in placement] == [0, 1]
    used = {w["node_id"] for w in placement}
    assert len(used) == 2 and used <= cluster_nodes(two_node_cluster)


@pytest.mark.ray
@pytest.mark.e2e
def test_tune_job_runs_on_the_cluster(two_node_cluster):
    tmp = two_node_cluster["tmp"]
    sweep = yaml.safe_load((ROOT / "tuning" / "tiny_r1_lr.yaml").read_text())
    sweep["search"].update(num_samples=2, max_concurrent_trials=2)
    sweep["scheduler"].update(grace_kimg=0.064)
    sweep["objective"].update(every_kimg=0.064, held_out=16)
    sweep["trial"].update(kimg=0.128)
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    submit(two_node_cluster, "env", f"ALAE_RAY_CACHE={tmp / 'cache'}", "ALAE_RAY_DEBUG=1",  # tracebacks in the log
           sys.executable, "-m", "alae_ray.cli", "tune", "--sweep", str(path), "--storage", str(tmp / "tune"),
           "--name", "job", "--quiet")
    out = tmp / "tune" / "job"
    assert (out / "results.csv").is_file() and (out / "results.md").is_file()
    assert len((out / "results.csv").read_text().strip().splitlines()) == 1 + 2  # header + two trials
    best = out / "best_preset.yaml"
    from alae_ray.core.config import load_config

    assert load_config(best).name  # the exported preset loads
