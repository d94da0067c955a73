"""``safehub audit URL``: remote files in an audit report with what each cost, on Dask workers
as in one process, and resumable from the journal (S3 objects by ETag, Hugging Face files by
commit)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from safehub.audit import audit
from tests.audit._caches import clean_checkpoint, evil_checkpoint
from tests.conftest import CliResult
from tests.remote.conftest import write_policy
from tests.remote.servers import HfRepo, RangeServer

Cli = Callable[..., CliResult]


def test_cli_audit_hf_repo_reports_costs(cli: Cli, server: RangeServer, policy: Path,
                                         tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "model.pt").write_bytes(clean_checkpoint(1))
    (repo / "evil.pt").write_bytes(evil_checkpoint(tmp_path / "marker"))
    server.repos["acme/audited"] = HfRepo("b" * 40, {"model.pt": repo / "model.pt",
                                                     "evil.pt": repo / "evil.pt"})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    result = cli("audit", "hf://acme/audited", "--no-state", "--policy", policy, "-f", "json")
    assert result.code == 1, result.err
    data = json.loads(result.out)
    costs = data["audit"]["remote"]
    prefix = f"hf://acme/audited@{'b' * 40}/"
    assert set(costs) == {prefix + "model.pt", prefix + "evil.pt"}
    assert all(c["requests"] >= 1 and c["bytes"] > 0 for c in costs.values())
    verdicts = {f["path"]: f["verdict"] for f in data["files"]}
    assert verdicts[prefix + "evil.pt"] == "unsafe" and verdicts[prefix + "model.pt"] == "clean"
    assert "requests: " + prefix in result.err
    assert not (tmp_path / "marker").exists()


def test_cli_refuses_fix_on_urls(cli: Cli, server: RangeServer, policy: Path) -> None:
    result = cli("audit", f"{server.url}/x.pt", "--fix", "--policy", policy)
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1


@pytest.mark.slow
def test_s3_audit_on_dask_equals_one_process_and_resumes(s3_env: str, tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    import boto3

    client = boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1")
    client.create_bucket(Bucket="audited")
    for i in range(12):
        data = evil_checkpoint(tmp_path / "m") if i == 5 else clean_checkpoint(i)
        client.put_object(Bucket="audited", Key=f"reg/{i:02d}.pt", Body=data)
    client.put_object(Bucket="audited", Key="reg/README.md", Body=b"# registry\n")
    pol = write_policy(tmp_path / "p.toml", s3_env)
    journal = tmp_path / "j.jsonl"
    single = audit(["s3://audited/reg/"], policy=pol, incremental=False)
    on_dask = audit(["s3://audited/reg/"], policy=pol, incremental=False,
                    executor="dask-local", workers=2, journal=journal)
    assert on_dask.report == single.report
    assert len(single.files) == 12 and len(single.unsafe) == 1
    assert set(on_dask.remote) == set(single.remote)
    # Rerun: nothing changed, nothing read again; then one object replaced: only it is.
    again = audit(["s3://audited/reg/"], policy=pol, incremental=False, journal=journal)
    assert again.stats.scanned == 0 and again.report == single.report
    client.put_object(Bucket="audited", Key="reg/03.pt",
                      Body=evil_checkpoint(tmp_path / "m"))
    changed = audit(["s3://audited/reg/"], policy=pol, incremental=False, journal=journal)
    assert changed.stats.scanned == 1 and len(changed.unsafe) == 2
