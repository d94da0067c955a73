"""``safehub policy check``: every problem in one pass, trust anchors that exist, and the
README's example policy passing as written."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import CliResult

Cli = Callable[..., CliResult]
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(autouse=True)
def _no_ambient_policy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SAFEHUB_POLICY", raising=False)
    monkeypatch.chdir(tmp_path)


def public_key(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key.public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def test_forbidden_global_does_not_hide_schema_errors(cli: Cli, tmp_path: Path) -> None:
    p = tmp_path / "p.toml"
    p.write_text('schema = 1\nextends = "default"\nloosen = ["scanner.allowed_globals"]\n'
                 '[trust]\nrequire_commit_pin = "yes"\n[sandbox]\ntimeout_s = -1\n'
                 'colour = 1\n[scanner]\nallowed_globals = ["os.system"]\n')
    result = cli("policy", "check", str(p))
    assert result.code == 2
    for key in ("trust.require_commit_pin", "sandbox.timeout_s", "sandbox.colour",
                "scanner.allowed_globals"):
        assert key in result.out, (key, result.out)
    assert "os.system" in result.out


def test_missing_and_unusable_key_files_are_reported(cli: Cli, tmp_path: Path) -> None:
    public_key(tmp_path / "keys" / "good.pub")
    (tmp_path / "keys" / "junk.pem").write_text("not a key\n")
    p = tmp_path / "p.toml"
    p.write_text('schema = 1\nextends = "default"\n'
                 '[[signatures]]\nscope = "acme/*"\npublic_keys = ["keys/good.pub", '
                 '"keys/missing.pub"]\n'
                 '[[signatures]]\nscope = "path:/srv/models/*"\n'
                 'certificate_chains = ["keys/junk.pem", "/nonexistent/ca.pem"]\n')
    result = cli("policy", "check", str(p))
    assert result.code == 2, result.out
    assert "keys/missing.pub" in result.out and "not found" in result.out
    assert "junk.pem" in result.out and "/nonexistent/ca.pem" in result.out
    assert "good.pub" not in result.out
    assert "signatures[0].public_keys[1]" in result.out
    assert "signatures[1].certificate_chains[0]" in result.out
    (tmp_path / "keys" / "missing.pub").write_bytes((tmp_path / "keys" / "good.pub").read_bytes())
    p.write_text(p.read_text().replace('"keys/junk.pem", "/nonexistent/ca.pem"',
                                       '"keys/good.pub"').replace("certificate_chains",
                                                                   "public_keys"))
    assert cli("policy", "check", str(p)).code == 0


def readme_policy() -> str:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    examples = [b for b in blocks if 'name = "acme"' in b]
    assert len(examples) == 1, "the README's example policy moved: update this test"
    return examples[0]


def test_readme_example_policy_passes_policy_check(cli: Cli, tmp_path: Path) -> None:
    body = readme_policy()
    policy = tmp_path / "acme.toml"
    policy.write_text(body, encoding="utf-8")
    for key in re.findall(r'public_keys = \["([^"]+)"\]', body):
        public_key(tmp_path / key)
    result = cli("policy", "check", str(policy))
    assert result.code == 0, result.out + result.err
    assert "OK" in result.out


def test_schema_errors_do_not_hide_loosening_in_the_same_file(cli: Cli, tmp_path: Path) -> None:
    p = tmp_path / "p.toml"
    p.write_text('schema = 1\nextends = "strict"\n[trust]\nrequire_commit_pin = "false"\n'
                 '[sandbox]\ntimeout_s = 99999\n[downloads]\nmax_size_mb = "1"\n'
                 '[repos."evilcorp/x"]\nentrypoints = "all"\n')
    result = cli("policy", "check", str(p))
    assert result.code == 2
    assert "trust.require_commit_pin" in result.out and "downloads.max_size_mb" in result.out
    assert "repos.evilcorp/x.entrypoints" in result.out
    assert "sandbox.timeout_s" in result.out and "loosen" in result.out, result.out
    assert "allows repo 'evilcorp/x'" in result.out, result.out
