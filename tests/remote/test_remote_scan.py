"""``safehub scan https://…``, ``hf://…``, ``s3://…``: the same verdicts as scanning the
downloaded files, reading only the ranges the scanner needs, every URL decided by the policy.

The servers are real and on 127.0.0.1: a Range-capable HTTP server that counts requests and
bytes (its own counts are the ground truth), the Hugging Face API subset that
``huggingface_hub`` downloads through, and moto's standalone S3 server.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from benchmarks.sparse_checkpoint import sparse_torch_zip
from safehub._scanner.context import ScanOptions
from safehub.findings import FileReport, Verdict
from safehub.remote import scan_remote
from safehub.scan import scan
from tests.conftest import CliResult
from tests.remote.conftest import corpus_files, write_policy
from tests.remote.servers import CountingProxy, HfRepo, RangeServer

Cli = Callable[..., CliResult]


class _Payload:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


def _same(local: FileReport, remote: FileReport) -> None:
    """Equal verdicts: format, verdict, records and every finding but its path."""
    def norm(report: FileReport) -> tuple[object, ...]:
        findings = sorted((dataclasses.replace(f, path="") for f in report.findings),
                          key=repr)
        return (report.format, report.verdict, report.size, tuple(report.records),
                tuple(repr(f) for f in findings), report.error)

    assert norm(remote) == norm(local), (local.path, remote.path)


def _local(path: Path, options: ScanOptions | None = None) -> FileReport:
    return scan([path], options=options or ScanOptions()).files[0]


# --- the 10 GB checkpoint -----------------------------------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sparse")
    evil = pickle.dumps({"w": 1, "hook": _Payload("touch /tmp/safehub-never")}, protocol=2)
    return {"clean": sparse_torch_zip(folder / "clean-10g.pt", gib=10, tensors=1000),
            "evil": sparse_torch_zip(folder / "evil-10g.pt", gib=10, tensors=8, payload=evil)}


@pytest.mark.parametrize("label", ["clean", "evil"])
def test_10gb_torch_zip_in_few_small_requests(server: RangeServer, policy: Path,
                                              big: dict[str, Path], label: str) -> None:
    path = big[label]
    assert path.stat().st_size > 10 * 10**9 and path.stat().st_blocks * 512 < 64 << 20
    url = server.add(f"/big/{path.name}", path)
    server.reset()
    result = scan_remote([url], policy=policy)
    report = result.report.files[0]
    _same(_local(path), report)
    assert report.verdict is (Verdict.CLEAN if label == "clean" else Verdict.UNSAFE)
    # The server's own counts: at most 8 requests and under 1 MiB of body for 10 GB.
    served = server.served
    assert len(served.requests) <= 8, [r[2][:60] for r in served.requests]
    assert served.body_bytes < 1 << 20
    cost = result.costs[url]
    assert cost.requests == len(served.requests) and cost.bytes == served.body_bytes


def test_servers_without_multi_range_still_give_the_same_verdict(
        tmp_path: Path, big: dict[str, Path]) -> None:
    plain = RangeServer(multi_range=False)
    try:
        url = plain.add("/evil.pt", big["evil"])
        pol = write_policy(tmp_path / "p.toml", plain.url)
        result = scan_remote([url], policy=pol)
        _same(_local(big["evil"]), result.report.files[0])
        # It answered a multi-range request with the whole 10 GB once; we hung up at once
        # (what the server managed to write is what socket buffers took).
        assert result.costs[url].bytes < 1 << 20
        assert plain.served.body_bytes < 64 << 20
    finally:
        plain.close()


# --- differential over the corpus ---------------------------------------------------------


def _corpus() -> list[Path]:
    files = corpus_files()
    if not files:
        pytest.skip("../shared/corpus is absent")
    return files


def test_https_verdicts_equal_local_over_the_corpus(server: RangeServer, policy: Path) -> None:
    files = _corpus()
    urls = {server.add(f"/corpus/{i}/{p.name}", p): p for i, p in enumerate(files)}
    result = scan_remote(list(urls), policy=policy)
    assert len(result.report.files) == len(files)
    for report in result.report.files:
        _same(_local(urls[report.path]), report)
    for url, cost in result.costs.items():
        # Never the whole file again and again: at most the overlap of the first head and
        # tail windows twice, plus multipart framing.
        assert cost.bytes <= 2 * urls[url].stat().st_size + 4096 * cost.requests


def test_generated_files_equal_local(server: RangeServer, policy: Path,
                                     tmp_path: Path) -> None:
    """Shapes the corpus lacks: bigger pickle records than one window, a compressed
    member, a zip behind a pickle, a legacy checkpoint, an empty and a tiny file."""
    import zipfile

    import torch

    from tests.audit._caches import torch_bytes

    made: dict[str, bytes] = {
        "big_pickle.pt": torch_bytes({f"k{i}": torch.zeros(1) for i in range(4000)}),
        "legacy.pt": torch_bytes({"w": torch.ones(3), "x": _Payload("true")}, legacy=True),
        "empty.bin": b"",
        "tiny.pkl": b"\x80\x02K\x01.",
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pickle.dumps({"p": _Payload("true")}))
        z.writestr("archive/version", "3\n")
    made["deflated.pt"] = buf.getvalue()
    made["polyglot.pkl"] = pickle.dumps([1, 2]) + buf.getvalue()
    urls = {}
    for name, data in made.items():
        path = tmp_path / name
        path.write_bytes(data)
        urls[server.add(f"/gen/{tmp_path.name}/{name}", path)] = path
    result = scan_remote(list(urls), policy=policy)
    for report in result.report.files:
        _same(_local(urls[report.path]), report)


# --- policy -------------------------------------------------------------------------------


def test_urls_outside_the_policy_are_never_requested(server: RangeServer, tmp_path: Path,
                                                     big: dict[str, Path], cli: Cli) -> None:
    url = server.add("/denied/evil.pt", big["evil"])
    other = write_policy(tmp_path / "other.toml", "https://example.org")
    server.reset()
    result = cli("scan", url, "--policy", other)
    assert result.code == 2
    assert "allowed_urls" in result.out + result.err
    assert server.served.requests == []


def test_every_redirect_hop_is_decided(tmp_path: Path, big: dict[str, Path]) -> None:
    """An allowed URL that redirects to a server the policy does not allow: the second
    server is never contacted."""
    import http.server
    import threading

    target = RangeServer()
    target.add("/evil.pt", big["evil"])

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"{target.url}/evil.pt")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    front = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=front.serve_forever, daemon=True).start()
    front_url = f"http://127.0.0.1:{front.server_address[1]}"
    try:
        pol = write_policy(tmp_path / "p.toml", front_url)
        denied = scan_remote([f"{front_url}/m.pt"], policy=pol).report.files[0]
        assert denied.verdict is not Verdict.CLEAN and "allowed_urls" in (denied.error or "")
        assert target.served.requests == []
        both = write_policy(tmp_path / "both.toml", front_url, target.url)
        allowed = scan_remote([f"{front_url}/m.pt"], policy=both).report.files[0]
        assert allowed.verdict is Verdict.UNSAFE
    finally:
        front.shutdown()
        front.server_close()
        target.close()


# --- Hugging Face -------------------------------------------------------------------------


@pytest.fixture
def hf(server: RangeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    import torch

    from tests.audit._caches import evil_checkpoint, torch_bytes

    files = {"pytorch_model.bin": torch_bytes({"w": torch.ones(2)}),
             "config.json": b'{"a": 1}\n',
             "sub/evil.pt": evil_checkpoint(tmp_path / "marker"),
             "README.md": b"# model\n"}
    disk: dict[str, Path] = {}
    for rel, data in files.items():
        path = tmp_path / "hfrepo" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        disk[rel] = path
    server.repos["acme/detector"] = HfRepo("a" * 40, disk)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    return disk


def test_hf_repo_verdicts_equal_local(server: RangeServer, policy: Path,
                                      hf: dict[str, Path]) -> None:
    result = scan_remote(["hf://acme/detector"], policy=policy)
    by_path = {r.path: r for r in result.report.files}
    prefix = f"hf://acme/detector@{'a' * 40}/"
    assert set(by_path) == {prefix + "pytorch_model.bin", prefix + "sub/evil.pt"}
    assert {s.path for s in result.report.skipped} == {prefix + "config.json",
                                                       prefix + "README.md"}
    for rel in ("pytorch_model.bin", "sub/evil.pt"):
        _same(_local(hf[rel]), by_path[prefix + rel])
    assert by_path[prefix + "sub/evil.pt"].verdict is Verdict.UNSAFE
    one = scan_remote(["hf://acme/detector@main/sub/evil.pt"], policy=policy)
    assert [r.path for r in one.report.files] == [prefix + "sub/evil.pt"]


def test_the_hf_endpoint_subset_is_what_huggingface_hub_downloads_through(
        server: RangeServer, hf: dict[str, Path], tmp_path: Path) -> None:
    """The real client against the loopback endpoint: the server speaks its protocol."""
    hub = pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hfcache"
    got = hub.hf_hub_download("acme/detector", "sub/evil.pt", cache_dir=cache,
                              endpoint=server.url)
    assert Path(got).read_bytes() == hf["sub/evil.pt"].read_bytes()
    assert Path(got).is_symlink() and "snapshots" in got
    listed = hub.HfApi(endpoint=server.url).list_repo_files("acme/detector")
    assert set(listed) == set(hf)


_SECRET = "hf_loopbackSecret0123456789"


def test_hf_private_repo_needs_the_token_and_the_cdn_never_gets_it(
        server: RangeServer, hf: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A private repo answers 401 without HF_TOKEN; with it, the API and resolve requests
    carry it, and the LFS redirect to the CDN (another origin) does not."""
    server.repos["acme/detector"] = dataclasses.replace(server.repos["acme/detector"],
                                                        token=_SECRET)
    cdn = RangeServer()
    server.lfs_cdn = cdn
    pol = write_policy(tmp_path / "p.toml", server.url, cdn.url)
    try:
        without = scan_remote(["hf://acme/detector"], policy=pol).report.files
        assert [r.format for r in without] == ["unreadable"] and "401" in (without[0].error or "")
        assert cdn.served.requests == []
        server.reset()
        monkeypatch.setenv("HF_TOKEN", _SECRET)
        result = scan_remote(["hf://acme/detector"], policy=pol)
        prefix = f"hf://acme/detector@{'a' * 40}/"
        by_path = {r.path: r for r in result.report.files}
        for rel in ("pytorch_model.bin", "sub/evil.pt"):
            _same(_local(hf[rel]), by_path[prefix + rel])
        assert cdn.served.requests and cdn.served.authorization == []
        sent = {path.split("?")[0] for path, _ in server.served.authorization}
        assert any(p.startswith("/api/models/acme/detector/") for p in sent)
        assert "/acme/detector/resolve/" + "a" * 40 + "/sub/evil.pt" in sent
        assert {value for _, value in server.served.authorization} == {f"Bearer {_SECRET}"}
        # Scanning the CDN's URL directly: another origin, so no token either.
        cdn.reset()
        direct = cdn.add("/direct/evil.pt", hf["sub/evil.pt"])
        assert scan_remote([direct], policy=pol).report.files[0].verdict is Verdict.UNSAFE
        assert cdn.served.requests and cdn.served.authorization == []
    finally:
        server.lfs_cdn = None
        cdn.close()


def test_hf_token_from_the_token_file_bound_to_the_endpoint_origin(
        server: RangeServer, hf: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub's token file ($HF_HOME/token) is read; a second loopback server on
    another port is another origin and never receives the token."""
    server.repos["acme/detector"] = dataclasses.replace(server.repos["acme/detector"],
                                                        token=_SECRET)
    home = tmp_path / "hf-home"
    home.mkdir()
    (home / "token").write_text(_SECRET + "\n")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_TOKEN_PATH")
    other = RangeServer()
    try:
        pol = write_policy(tmp_path / "p.toml", server.url, other.url)
        one = scan_remote(["hf://acme/detector@main/sub/evil.pt"], policy=pol)
        assert one.report.files[0].verdict is Verdict.UNSAFE
        url = other.add("/evil.pt", hf["sub/evil.pt"])
        assert scan_remote([url], policy=pol).report.files[0].verdict is Verdict.UNSAFE
        assert other.served.requests and other.served.authorization == []
        monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
        off = scan_remote(["hf://acme/detector@main/sub/evil.pt"], policy=pol)
        assert off.report.files[0].format == "unreadable"
    finally:
        server.repos["acme/detector"] = dataclasses.replace(server.repos["acme/detector"],
                                                            token=None)
        other.close()


# --- S3 -----------------------------------------------------------------------------------


def test_s3_prefix_verdicts_equal_local(s3_env: str, tmp_path: Path,
                                        big: dict[str, Path]) -> None:
    import boto3

    files = _corpus()[:40]
    client = boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1")
    client.create_bucket(Bucket="models")
    keys = {}
    for i, path in enumerate(files):
        key = f"registry/{i:03d}/{path.name}"
        client.upload_file(str(path), "models", key)
        keys[f"s3://models/{key}"] = path
    pol = write_policy(tmp_path / "p.toml", s3_env)
    result = scan_remote(["s3://models/registry/"], policy=pol)
    reported = {r.path: r for r in result.report.files}
    for url, path in keys.items():
        local = _local(path)
        if url not in reported:  # skipped as not a model format: locally unknown too
            assert local.verdict is Verdict.UNKNOWN and not local.error
            continue
        _same(local, reported[url])
    denied = scan_remote(["s3://models/registry/"],
                         policy=write_policy(tmp_path / "d.toml", "https://example.org"))
    assert denied.report.files[0].format == "unreadable"


@pytest.fixture
def s3_counted(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingProxy]:
    """Scans go through a proxy that counts what moto was asked, server-side."""
    proxy = CountingProxy(s3_env)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    try:
        yield proxy
    finally:
        proxy.close()


def _s3_put(endpoint: str, bucket: str, files: dict[str, Path]) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    if bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=bucket)
    for key, path in files.items():
        client.upload_file(str(path), bucket, key)


def _s3_scan(proxy: CountingProxy, tmp_path: Path, url: str) -> tuple[FileReport, int, int]:
    """One object's report, and the GETs and body bytes moto served for reading it."""
    pol = write_policy(tmp_path / "p.toml", proxy.url)
    listed = scan_remote([url], policy=pol)  # the listing is its own cost: count reads only
    report = listed.report.files[0]
    gets = [r for r in proxy.served.requests if r[0] == "GET" and "list-type" not in r[1]
            and r[1].split("?")[0].endswith(url.rsplit("/", 1)[1])]
    cost = listed.costs[url]
    assert all(r[2].startswith("bytes=") for r in gets), gets  # ranges only, never all of it
    assert cost.requests == len(gets)
    return report, len(gets), cost.bytes


@pytest.mark.parametrize("label", ["clean", "evil"])
def test_s3_large_sparse_torch_zip_in_at_most_8_requests(
        s3_env: str, s3_counted: CountingProxy, tmp_path: Path, label: str) -> None:
    """S3 takes one range per GET: head, tail (with the central directory) and one
    range per group of records; counted by the proxy in front of moto."""
    evil = pickle.dumps({"w": 1, "hook": _Payload("touch /tmp/safehub-never")}, protocol=2)
    path = sparse_torch_zip(tmp_path / f"{label}.pt", gib=3 / 64, tensors=4,
                            payload=evil if label == "evil" else None)
    _s3_put(s3_env, "big", {f"ckpt/{label}.pt": path})
    s3_counted.reset()
    report, gets, fetched = _s3_scan(s3_counted, tmp_path, f"s3://big/ckpt/{label}.pt")
    _same(_local(path), report)
    assert report.verdict is (Verdict.CLEAN if label == "clean" else Verdict.UNSAFE)
    assert gets <= 8 and fetched < 1 << 20 and s3_counted.served.body_bytes < 2 << 20


def test_s3_records_further_apart_cost_requests_not_bytes(
        s3_env: str, s3_counted: CountingProxy, tmp_path: Path) -> None:
    """40 tensors 1.2 MiB apart: more than 1 MiB between them, so each group of records
    is its own GET (S3 has no multi-range) and the bytes stay small; small gaps merge."""
    far = sparse_torch_zip(tmp_path / "far.pt", gib=3 / 64, tensors=40)
    near = sparse_torch_zip(tmp_path / "near.pt", gib=1 / 256, tensors=20)  # 200 KiB apart
    _s3_put(s3_env, "apart", {"far.pt": far, "near.pt": near})
    s3_counted.reset()
    report, gets, fetched = _s3_scan(s3_counted, tmp_path, "s3://apart/far.pt")
    _same(_local(far), report)
    assert gets <= 2 + 40 and fetched < 1 << 20
    s3_counted.reset()
    report, gets, fetched = _s3_scan(s3_counted, tmp_path, "s3://apart/near.pt")
    _same(_local(near), report)
    # 18 header ranges 200 KiB apart beyond head and tail: 1 MiB of gaps bridged (5 of
    # them) leaves 13 ranges; before the bridging each range was its own GET (20 in all).
    assert gets <= 15 and fetched < 2 << 20


def test_cli_scan_url_reports_the_bytes_it_fetched(server: RangeServer, policy: Path,
                                                   big: dict[str, Path], cli: Cli) -> None:
    clean = server.add("/cli/clean.pt", big["clean"])
    evil = server.add("/cli/evil.pt", big["evil"])
    ok = cli("scan", clean, "--policy", policy)
    assert ok.code == 0, ok.err
    assert f"in 6 requests: {clean}" in ok.err or "requests: " + clean in ok.err
    bad = cli("scan", clean, evil, "--policy", policy, "-f", "json")
    assert bad.code == 1


def test_python_m_safehub_scan_url(server: RangeServer, policy: Path,
                                   big: dict[str, Path]) -> None:
    """The real entry point in its own process: report on stdout, costs on stderr."""
    import subprocess
    import sys

    url = server.add("/proc/evil.pt", big["evil"])
    proc = subprocess.run([sys.executable, "-m", "safehub", "scan", url, "--policy",
                           str(policy), "-f", "json"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "NO_PROXY": "127.0.0.1"})
    assert proc.returncode == 1, proc.stderr
    import json

    report = json.loads(proc.stdout)
    assert [f["path"] for f in report["files"]] == [url]
    assert "requests: " + url in proc.stderr


def test_hf_lfs_redirects_to_a_cdn_are_decided_by_the_policy(
        server: RangeServer, hf: dict[str, Path], tmp_path: Path) -> None:
    """As the Hub does, LFS files redirect to a CDN host: that hop is its own decision."""
    cdn = RangeServer()
    server.lfs_cdn = cdn
    try:
        only_hub = scan_remote(["hf://acme/detector@main/sub/evil.pt"],
                               policy=write_policy(tmp_path / "a.toml", server.url))
        report = only_hub.report.files[0]
        assert report.format == "unreadable" and "allowed_urls" in report.error
        assert cdn.served.requests == []
        both = scan_remote(["hf://acme/detector@main/sub/evil.pt"],
                           policy=write_policy(tmp_path / "b.toml", server.url, cdn.url))
        _same(_local(hf["sub/evil.pt"]), both.report.files[0])
        assert cdn.served.requests
    finally:
        server.lfs_cdn = None
        cdn.close()


# --- the default policy and Hugging Face's download hosts ---------------------------------


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://huggingface.co/acme/m/resolve/main/model.safetensors", True),
    ("https://cas-bridge.xethub.hf.co/xet-bridge-us/6512/abc?X-Amz-Signature=1", True),
    ("https://cas-bridge.xethub-eu.hf.co/xet-bridge-eu/6512/abc", True),
    ("https://us.aws.cdn.hf.co/repos/ab/cd/abcdef", True),
    ("https://us.gcp.cdn.hf.co/repos/ab/cd/abcdef", True),
    ("https://cdn-lfs-us-1.hf.co/repos/ab/cd/abcdef", True),
    ("https://cdn-lfs-eu-1.hf.co/repos/ab/cd/abcdef", True),
    ("https://cdn-lfs.hf.co/repos/ab/cd/abcdef", True),
    # Xet protocol hosts (only the hf_xet client talks to them), look-alikes, other ports.
    ("https://cas-server.xethub.hf.co/v1/reconstructions/abc", False),
    ("https://transfer.xethub.hf.co/xorbs/default/abc", False),
    ("https://evil.hf.co/repos/ab/cd/abcdef", False),
    ("https://cas-bridge.xethub.hf.co.evil.example/x", False),
    ("https://us.aws.cdn.hf.co:8443/repos/ab", False),
    ("http://us.aws.cdn.hf.co/repos/ab", False),
])
def test_default_policy_allows_exactly_the_hub_file_hosts(url: str, allowed: bool) -> None:
    from safehub._remote.target import decide_url
    from safehub.errors import PolicyViolation
    from safehub.policy import load_policy

    policy = load_policy("default")
    if allowed:
        assert decide_url(policy, url)
    else:
        with pytest.raises(PolicyViolation):
            decide_url(policy, url)
