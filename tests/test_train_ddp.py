"""DDP: a 2-process torchrun run on CPU (Gloo) trains, writes one checkpoint/log/model, and sees
the same number of samples per epoch as a single-process run."""
import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from napari_radiogen.core.train.ddp import ShardSampler  # noqa: E402

CFG = """name: ddp-test
task: phantom-demo
data: phantom
phantom: {n: 12, slices: 3, size: 16, seed: 0}
model: {width: 4, depth: 2}
train: {epochs: 2, batch_size: 2, lr: 0.01, val_fraction: 0.25, sampler: weighted}
folds: 0
test_fraction: 0.25
"""


def test_shard_sampler_covers_the_global_order_without_padding():
    for n, w in ((21, 2), (10, 3), (5, 4)):
        shards = [list(ShardSampler(n, rank=r, world_size=w, seed=3)) for r in range(w)]
        glob = ShardSampler(n, seed=3).global_order()
        assert sum(len(s) for s in shards) == n
        assert sorted(sum(shards, [])) == sorted(glob)
        s = ShardSampler(n, rank=0, world_size=w, seed=3)
        s.set_epoch(1)
        assert list(s) != shards[0] or n < 3        # a new order each epoch
    wsamp = ShardSampler(50, weights=[0.0] * 25 + [1.0] * 25, seed=0)
    assert all(i >= 25 for i in wsamp)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process_sample_count(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CFG)
    common = ["-m", "napari_radiogen", "train", str(cfg), "--device", "cpu", "--no-install",
              "--quiet"]
    single = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")],
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nproc_per_node=2", *common, "--out", str(tmp_path / "two")],
                           env=_env(), capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert "DDP 2 processes" in multi.stderr
    s1 = json.loads((tmp_path / "one" / "state.json").read_text())
    s2 = json.loads((tmp_path / "two" / "state.json").read_text())
    assert s1["samples_per_epoch"] == s2["samples_per_epoch"]
    assert len(s2["samples_per_epoch"]) == 2 and s2["samples_per_epoch"][0] > 0
    # one log with one line per epoch (rank 0 only), one model, one checkpoint
    log = (tmp_path / "two" / "train.log").read_text().splitlines()
    assert sum('"epoch"' in line for line in log) == 2
    assert len(list((tmp_path / "two").glob("*.safetensors"))) == 2   # model + checkpoint
    assert (tmp_path / "two" / "report" / "report.html").exists()
