"""Real processes: eight loaders share one download; a killed download leaves nothing usable."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from safehub.fetch import Fetcher
from tests.fetch.fakehub import FakeHub, Fault

REPO_ROOT = Path(__file__).resolve().parents[2]

# Loads a safetensors model through safehub's fetch path (open_url: download once, verify,
# scan, decide, then load from the same descriptor). numpy instead of torch keeps eight
# interpreters cheap to start; load_state_dict_from_url is open_url plus torch.load.
LOADER = textwrap.dedent("""
    import hashlib, json, os, sys, time
    import safetensors.numpy
    from safehub.fetch import Fetcher
    import safehub.scan
    ready, gate, url, policy = sys.argv[1:5]
    open(ready, "w").close()
    while not os.path.exists(gate):
        time.sleep(0.005)
    started = time.time()
    with Fetcher(policy).open_url(url) as opened:
        finished = time.time()
        state = safetensors.numpy.load(opened.file.read())
        fresh = not opened.info.from_cache
    print(json.dumps({"fresh": fresh, "started": started, "finished": finished,
                      "tensors": {k: hashlib.sha256(v.tobytes()).hexdigest()
                                  for k, v in sorted(state.items())}}))
""")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


@pytest.mark.slow
def test_eight_processes_download_once_and_load_the_same(
        tmp_path: Path, hub: FakeHub, policy_file: Path) -> None:
    import numpy as np
    import safetensors.numpy

    weights = {"weight": np.random.default_rng(0).random(1 << 19, dtype=np.float64),
               "bias": np.arange(8, dtype=np.float32)}
    model = safetensors.numpy.save(weights)
    # Slow enough that every process asks while the first one is still downloading.
    url = hub.add_file("/models/shared.safetensors", model, Fault(chunk_delay=0.02))
    gate = tmp_path / "go"
    procs = []
    for i in range(8):
        ready = tmp_path / f"ready{i}"
        procs.append((ready, subprocess.Popen(
            [sys.executable, "-c", LOADER, str(ready), str(gate), url, str(policy_file)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())))
    deadline = time.monotonic() + 120
    while not all(r.exists() for r, _ in procs):
        if time.monotonic() > deadline:
            pytest.fail("hang guard: the loaders did not start")
        assert all(p.poll() is None for _, p in procs), [p.communicate() for _, p in procs]
        time.sleep(0.02)
    gate.touch()
    outputs = []
    for _, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out))
    assert hub.count("/models/shared.safetensors") == 1, "one download for eight processes"
    downloader = [o for o in outputs if o["fresh"]]
    assert len(downloader) == 1, "the others were served from the cache"
    tensors = [o["tensors"] for o in outputs]
    assert all(t == tensors[0] for t in tensors), "identical results"
    assert tensors[0] == {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in weights.items()}


def test_killed_download_leaves_nothing_usable_and_the_next_call_succeeds(
        hub: FakeHub, policy_file: Path, big_checkpoint: bytes, cache_dir: Path) -> None:
    path = "/models/killed.pt"
    url = hub.add_file(path, big_checkpoint, Fault(chunk_delay=0.05))
    script = ("import sys\nfrom safehub.fetch import Fetcher\n"
              "Fetcher(sys.argv[1], cache_dir=sys.argv[3]).fetch_url(sys.argv[2])\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(policy_file), url,
                             str(cache_dir)], env=_env(), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    partials: list[Path] = []
    while time.monotonic() < deadline:
        partials = list((cache_dir / "tmp").glob("*.partial")) if (cache_dir / "tmp").is_dir() \
            else []
        if hub.sent.get(path, 0) >= 1 << 20 and partials and partials[0].stat().st_size:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    else:
        pytest.fail("the download never got going")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # What is left: a .partial in the work area, never an entry (no record, no file).
    files = cache_dir / "files"
    assert not files.exists() or not [p for p in files.rglob("*") if p.is_file()]
    assert [p.suffix for p in (cache_dir / "tmp").iterdir()] == [".partial"]
    assert partials[0].stat().st_size < len(big_checkpoint)

    hub.faults[path].chunk_delay = 0
    info = Fetcher(policy_file, cache_dir=cache_dir).fetch_url(url)
    assert info.sha256 == hashlib.sha256(big_checkpoint).hexdigest() and not info.from_cache
    assert list((cache_dir / "tmp").iterdir()) == [], "the dead download's leftovers are gone"
    assert hub.count(path) == 2
