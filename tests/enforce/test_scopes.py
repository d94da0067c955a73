"""Enforcement that only tightens, names bound before enforce(), and extra globals that
belong to one call (one thread), never to the process."""

from __future__ import annotations

import fractions
import io
import pickle
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.jit.mobile
from torch import load as load_bound_early  # bound before any enforce()
from torch.hub import load_state_dict_from_url as lsdfu_bound_early

import safehub
from safehub.errors import PolicyViolation, UnsafeModel
from tests.enforce import gate
from tests.enforce.payloads import _torch_checkpoint


def _policy(tmp_path: Path, name: str, allowed: list[str], extends: str = "default") -> Path:
    path = tmp_path / f"{name}.toml"
    names = ", ".join(f'"{n}"' for n in allowed)
    # Allowing globals loosens the parent preset: the policy says so (`loosen`).
    path.write_text(f'schema = 1\nextends = "{extends}"\nloosen = ["scanner.allowed_globals"]\n'
                    f'[scanner]\nallowed_globals = [{names}]\n')
    return path


def _namespace_checkpoint(path: Path) -> Path:
    torch.save({"args": fractions.Fraction(1, 10), "w": torch.ones(1)}, path)
    return path


def test_names_bound_before_enforce_are_covered(tmp_path: Path, marker_dir: Path) -> None:
    marker = marker_dir / "fired"
    ckpt = tmp_path / "evil.pt"
    _torch_checkpoint(ckpt, marker)
    with safehub.enforce("default"):
        with pytest.raises(PolicyViolation, match=r"posix\.system"):
            load_bound_early(ckpt, weights_only=False)
        assert lsdfu_bound_early.__code__.co_filename.startswith("<safehub enforce")
    assert not marker.exists()
    # Torch's own code again once no enforcement is left.
    assert load_bound_early.__code__.co_filename.endswith("serialization.py")
    import _pickle

    assert pickle.load is _pickle.load and pickle.Unpickler is _pickle.Unpickler


def test_inner_scope_cannot_loosen_and_leaving_it_keeps_the_outer(tmp_path: Path) -> None:
    ckpt = _namespace_checkpoint(tmp_path / "ns.pt")
    loose = _policy(tmp_path, "loose", ["fractions.Fraction"])
    with safehub.enforce("default") as outer:
        with safehub.enforce(loose) as inner:
            with pytest.raises(PolicyViolation, match=r"fractions\.Fraction"):
                torch.load(ckpt)  # the outer policy still refuses it
            with pytest.raises(UnsafeModel, match="SH122"):
                pickle.loads(pickle.dumps(fractions.Fraction(1, 10)))
        assert not inner.active and outer.active
        with pytest.raises(PolicyViolation):
            torch.load(ckpt)
        with pytest.raises(UnsafeModel, match="SH122"):
            pickle.loads(pickle.dumps(fractions.Fraction(1, 10)))


def test_inner_scope_tightens_and_leaving_it_restores_the_outer(tmp_path: Path) -> None:
    ckpt = _namespace_checkpoint(tmp_path / "ns.pt")
    loose = _policy(tmp_path, "loose", ["fractions.Fraction"])
    with safehub.enforce(loose):
        assert torch.load(ckpt)["args"] == fractions.Fraction(1, 10)
        assert pickle.loads(pickle.dumps(fractions.Fraction(1, 10))) == fractions.Fraction(1, 10)
        with safehub.enforce("default"):
            with pytest.raises(PolicyViolation):
                torch.load(ckpt)
            with pytest.raises(UnsafeModel):
                pickle.loads(pickle.dumps(fractions.Fraction(1, 10)))
        assert torch.load(ckpt)["args"] == fractions.Fraction(1, 10)


def test_undoing_the_outer_scope_first_keeps_the_inner(tmp_path: Path) -> None:
    ckpt = _namespace_checkpoint(tmp_path / "ns.pt")
    outer = safehub.enforce(_policy(tmp_path, "loose", ["fractions.Fraction"]))
    inner = safehub.enforce("default")
    try:
        outer.undo()
        with pytest.raises(PolicyViolation):
            torch.load(ckpt)
    finally:
        inner.undo()
        outer.undo()
    # torch's own again:
    assert torch.load(ckpt, weights_only=False)["args"] == fractions.Fraction(1, 10)


def test_clean_data_still_loads_through_every_pickle_entry_point(tmp_path: Path) -> None:
    import joblib  # type: ignore[import-untyped]
    import numpy as np

    data = {"a": [1, 2.5, "x", None, (True, b"y")], "s": {1, 2}, "od": {"k": 1}}
    blob = pickle.dumps(data, protocol=2)
    arr = np.array([1, "two", 3.0], dtype=object)
    npy = tmp_path / "a.npy"
    np.save(npy, arr, allow_pickle=True)
    jl = tmp_path / "a.joblib"
    joblib.dump({"x": [1, 2]}, jl)
    with safehub.enforce("default"):
        assert pickle.loads(blob) == data
        assert pickle.load(io.BytesIO(blob)) == data
        assert pickle.Unpickler(io.BytesIO(blob)).load() == data
        assert np.load(npy, allow_pickle=True).tolist() == arr.tolist()
        assert joblib.load(jl) == {"x": [1, 2]}


def test_a_custom_unpickler_subclass_is_checked_too(tmp_path: Path, marker_dir: Path) -> None:
    from tests.enforce.payloads import _System

    blob = pickle.dumps(_System(marker_dir / "fired"))

    class Permissive(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            import importlib

            return getattr(importlib.import_module(module), name)

    with safehub.enforce("default"), pytest.raises(UnsafeModel, match="SH122"):
        Permissive(io.BytesIO(blob)).load()
    assert not (marker_dir / "fired").exists()


class _ResolvesItself:
    """A program's compatibility mixin: it maps old module names and imports the rest."""

    RENAMES: ClassVar[dict[str, str]] = {"mypkg.old": "mypkg.new"}

    def find_class(self, module: str, name: str) -> Any:
        import importlib

        return getattr(importlib.import_module(self.RENAMES.get(module, module)), name)


class _CompatUnpickler(_ResolvesItself, pickle.Unpickler):
    pass


def _mixin_load(path: Path) -> Any:
    with path.open("rb") as fh:
        return _CompatUnpickler(fh).load()


def _instance_load(path: Path) -> Any:
    with path.open("rb") as fh:
        unpickler = pickle._Unpickler(fh)  # type: ignore[attr-defined]
        unpickler.find_class = _ResolvesItself().find_class
        return unpickler.load()


def _mixin_made_later_load(path: Path) -> Any:
    class Later(_ResolvesItself, pickle.Unpickler):  # under enforce(): pure Python
        pass

    with path.open("rb") as fh:
        return Later(fh).load()


@pytest.mark.parametrize("load", [_mixin_load, _mixin_made_later_load, _instance_load],
                         ids=["mixin", "mixin_made_later", "instance"])
def test_a_find_class_outside_the_unpicklers_own_class_is_checked_too(
        tmp_path: Path, marker_dir: Path, load: Any) -> None:
    """find_class from a mixin (on the C unpickler before enforce(), on the pure-Python
    one after) or set on the instance: the class has none of its own to wrap, and the
    pickle's imports are checked all the same."""
    from tests.enforce.payloads import _System

    marker = marker_dir / "fired"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"x": _System(marker)}))
    load(path)
    assert marker.exists()  # the program's own resolver runs the payload without safehub
    marker.unlink()

    clean = tmp_path / "clean.pkl"
    clean.write_bytes(pickle.dumps({"x": [1, 2]}, protocol=0))  # GLOBAL and INST-free
    with safehub.enforce("default"):
        with pytest.raises(UnsafeModel, match="SH122"):
            load(path)
        assert load(clean) == {"x": [1, 2]}
    assert not marker.exists()


def test_extra_globals_are_not_visible_to_other_threads(tmp_path: Path) -> None:
    """While an enforced load runs with a policy's extra globals, torch's weights-only
    unpickler in another thread does not accept them."""
    from torch import _weights_only_unpickler

    gated = tmp_path / "gate.pt"
    held = gate.Gate()
    held.x = 1  # type: ignore[attr-defined]  # a state: unpickling calls __setstate__
    # Fraction first: it is allowed for this load and resolved before the gate blocks.
    torch.save({"ns": fractions.Fraction(1, 10), "g": held, "w": torch.ones(1)}, gated)
    policy = _policy(tmp_path, "gate", ["tests.enforce.gate.Gate", "fractions.Fraction"])
    namespace_pickle = pickle.dumps(fractions.Fraction(1, 10), protocol=2)
    gate.entered.clear()
    gate.release.clear()
    results: dict[str, Any] = {}

    def enforced_load() -> None:
        try:
            results["a"] = torch.load(gated)
        except Exception as exc:  # reported below
            results["a"] = exc

    with safehub.enforce(policy):
        thread = threading.Thread(target=enforced_load)
        thread.start()
        try:
            assert gate.entered.wait(120), results.get("a")
            # Thread A is inside torch's unpickler with Gate and Fraction allowed.
            with pytest.raises(pickle.UnpicklingError, match=r"fractions\.Fraction"):
                _weights_only_unpickler.load(io.BytesIO(namespace_pickle))
            process_wide = torch.serialization.get_safe_globals()
            assert gate.Gate not in process_wide and fractions.Fraction not in process_wide
        finally:
            gate.release.set()
            thread.join(120)
    assert isinstance(results["a"], dict) and isinstance(results["a"]["g"], gate.Gate), results


def test_model_zoo_and_hub_urls_are_decided_by_every_active_policy(
        tmp_path: Path, isolated_torch_home: Path) -> None:
    import torch.utils.model_zoo

    from tests.fetch.fakehub import FakeHub
    from tests.fetch.helpers import torch_bytes, write_policy

    server = FakeHub("127.0.0.1")
    try:
        url = server.add_file("/models/net.pt", torch_bytes({"w": torch.ones(2)}))
        allows = write_policy(tmp_path / "allows.toml", server)
        also = write_policy(tmp_path / "also.toml", server,
                            body="[scanner]\nallowed_globals = []\n")
        with safehub.enforce("default"), pytest.raises(PolicyViolation):
            torch.utils.model_zoo.load_url(url)  # http on loopback is not in `default`
        with safehub.enforce(allows):
            assert torch.equal(torch.utils.model_zoo.load_url(url)["w"], torch.ones(2))
            with safehub.enforce("default"), pytest.raises(PolicyViolation):
                lsdfu_bound_early(url)  # the inner scope tightens
            with safehub.enforce(also):  # two policies: both decide, both scan
                assert torch.equal(lsdfu_bound_early(url)["w"], torch.ones(2))
            assert torch.equal(torch.hub.load_state_dict_from_url(url)["w"], torch.ones(2))
    finally:
        server.close()


def test_an_outer_scopes_download_pins_hold_under_an_inner_scope_without_them(
        tmp_path: Path, isolated_torch_home: Path) -> None:
    """An inner ``enforce()`` whose policy has no pin for a URL does not drop the outer
    policy's pin: the bytes loaded (load_state_dict_from_url) or written
    (download_url_to_file) must have it."""
    import hashlib

    from safehub.errors import IntegrityError
    from tests.fetch.fakehub import FakeHub
    from tests.fetch.helpers import torch_bytes, write_policy

    reviewed = torch_bytes({"w": torch.ones(2)})
    swapped = torch_bytes({"w": torch.full((2,), 666.0)})
    server = FakeHub("127.0.0.1")
    try:
        url = server.add_file("/models/net.pt", swapped)
        pin = hashlib.sha256(reviewed).hexdigest()
        outer = write_policy(tmp_path / "outer.toml", server,
                             body=f'[downloads.pins]\n"{url}" = "{pin}"\n')
        inner = write_policy(tmp_path / "inner.toml", server)
        dst = tmp_path / "net.pt"
        with safehub.enforce(outer):
            with pytest.raises(IntegrityError):
                torch.hub.load_state_dict_from_url(url)  # the outer policy alone
            with safehub.enforce(inner):
                with pytest.raises(IntegrityError, match="outer enforce"):
                    torch.hub.load_state_dict_from_url(url)
                with pytest.raises(IntegrityError, match="outer enforce"):
                    lsdfu_bound_early(url, file_name="other.pt")
                with pytest.raises(IntegrityError, match="outer enforce"):
                    torch.hub.download_url_to_file(url, str(dst))
                assert not dst.exists()
                server.add_file("/models/net.pt", reviewed)  # the pinned bytes load
                assert torch.equal(lsdfu_bound_early(url, file_name="net2.pt")["w"],
                                   torch.ones(2))
                torch.hub.download_url_to_file(url, str(dst))
                assert hashlib.sha256(dst.read_bytes()).hexdigest() == pin
    finally:
        server.close()


def test_an_outer_scopes_repo_pin_and_url_rules_hold_for_torch_hub_load_in_an_inner_scope(
        tmp_path: Path, isolated_torch_home: Path) -> None:
    """An inner ``enforce()`` that trusts a repository without a pin does not drop the outer
    policy's commit pin, and the downloads the repository's code asks for still need the
    outer policy's allowlist: torch.hub calls run under every active policy."""
    from safehub.errors import IntegrityError
    from tests.fetch.fakehub import FakeHub
    from tests.fetch.helpers import torch_bytes, write_policy

    def hubconf(value: float) -> bytes:
        return ("dependencies = ['torch']\nimport torch\n\n\ndef m():\n"
                "    layer = torch.nn.Linear(1, 1)\n"
                f"    torch.nn.init.constant_(layer.weight, {value})\n    return layer\n\n\n"
                "def fetched(url):\n    return torch.hub.load_state_dict_from_url(url)\n"
                ).encode()

    hub, elsewhere = FakeHub("127.0.0.1"), FakeHub("127.0.0.1")
    try:
        reviewed = hub.add_repo("acme/det", {"hubconf.py": hubconf(1.0)})
        hub.add_repo("acme/det", {"hubconf.py": hubconf(666.0)})  # main moves on
        url = elsewhere.add_file("/w.pt", torch_bytes({"w": torch.ones(1)}))
        outer = write_policy(tmp_path / "outer.toml", hub,
                             body=f'[repos."acme/det"]\ncommit = "{reviewed}"\n')
        inner = write_policy(tmp_path / "inner.toml", hub, elsewhere)
        with safehub.enforce(outer):
            assert torch.hub.load("acme/det", "m")["weight"].item() == 1.0
            with safehub.enforce(inner):
                assert torch.hub.load("acme/det", "m")["weight"].item() == 1.0
                with pytest.raises(IntegrityError, match=reviewed):
                    torch.hub.load("acme/det:main", "m")
                with pytest.raises(PolicyViolation, match="allowed_urls"):
                    torch.hub.load("acme/det", "fetched", url)
        with safehub.enforce(inner):  # the inner policy alone allows both
            assert torch.hub.load("acme/det:main", "m")["weight"].item() == 666.0
            assert torch.equal(torch.hub.load("acme/det", "fetched", url)["w"], torch.ones(1))
    finally:
        hub.close()
        elsewhere.close()


def test_an_outer_scopes_signature_rule_holds_for_a_local_torch_hub_load_in_an_inner_scope(
        tmp_path: Path) -> None:
    """An outer policy that requires a signature on local repository folders is not dropped
    by an inner ``enforce()`` whose policy requires none: the unsigned folder is refused."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from safehub.errors import IntegrityError
    from safehub.signing import sign

    key = ec.generate_private_key(ec.SECP256R1())
    private = tmp_path / "signer.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    (tmp_path / "signer.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    outer = tmp_path / "outer.toml"
    outer.write_text('schema = 1\nextends = "default"\n[[signatures]]\n'
                     f'scope = "path:{tmp_path}/*"\npublic_keys = ["signer.pub"]\n')
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(
        "import torch\n\n\ndef m():\n    return torch.nn.Linear(1, 1)\n")
    with safehub.enforce(outer):
        with pytest.raises(IntegrityError, match="not signed"):
            torch.hub.load(str(repo), "m", source="local")
        with safehub.enforce("default"):
            with pytest.raises(IntegrityError, match="not signed"):
                torch.hub.load(str(repo), "m", source="local")
            sign(repo, private_key=private)
            assert torch.hub.load(str(repo), "m", source="local")["weight"].shape == (1, 1)


def test_torchscript_loads_from_the_snapshot_only_when_every_policy_allows_it(
        tmp_path: Path) -> None:
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    path = tmp_path / "ts.pt"
    torch.jit.save(scripted, str(path))
    allows = tmp_path / "ts.toml"
    allows.write_text('schema = 1\nextends = "default"\nloosen = ["scanner.allow_torchscript"]\n'
                      '[scanner]\nallow_torchscript = true\n')
    with safehub.enforce("default"), pytest.raises(PolicyViolation, match="TorchScript"):
        torch.jit.load(path)
    with safehub.enforce(allows):
        loaded = torch.jit.load(path)
        assert torch.equal(loaded.weight, scripted.weight)
        with safehub.enforce("default"), pytest.raises(PolicyViolation, match="TorchScript"):
            torch.jit.load(path)
        # The mobile routes take the same rule; torch._C's readers serve them inside it.
        lite = tmp_path / "ts.ptl"
        scripted._save_for_lite_interpreter(str(lite))
        assert torch.jit.mobile._load_for_lite_interpreter(str(lite)) is not None
        assert torch.jit.mobile._backport_for_mobile_to_buffer(str(lite), 5)
        with pytest.raises(PolicyViolation, match="outside a load safehub scanned"):
            torch._C._backport_for_mobile_to_buffer(str(lite), 5)


def test_a_legitimate_dcp_checkpoint_loads_when_the_policy_allows_its_classes(
        tmp_path: Path) -> None:
    import warnings

    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "ck"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.ones(2)}, checkpoint_id=str(folder))  # type: ignore[attr-defined]
        policy = _policy(tmp_path, "dcp", ["torch.distributed.checkpoint.metadata.*",
                                           "torch.distributed.checkpoint.filesystem._StorageInfo",
                                           "pathlib.PosixPath"])
        with safehub.enforce("default"), pytest.raises(BaseException, match="SH122"):
            dcp.load({"w": torch.zeros(2)}, checkpoint_id=str(folder))  # type: ignore[attr-defined]
        state = {"w": torch.zeros(2)}
        with safehub.enforce(policy):
            dcp.load(state, checkpoint_id=str(folder))  # type: ignore[attr-defined]
    assert torch.equal(state["w"], torch.ones(2))


def test_joblib_arrays_load_when_the_policy_allows_the_array_wrapper(tmp_path: Path) -> None:
    import joblib  # type: ignore[import-untyped]
    import numpy as np

    path = tmp_path / "a.joblib"
    joblib.dump({"a": np.arange(5)}, path)
    policy = _policy(tmp_path, "jl", ["joblib.numpy_pickle.NumpyArrayWrapper"])
    with safehub.enforce("default"), pytest.raises(UnsafeModel, match="NumpyArrayWrapper"):
        joblib.load(path)
    with safehub.enforce(policy):
        assert joblib.load(path)["a"].tolist() == [0, 1, 2, 3, 4]


def test_hub_loads_run_under_every_scopes_sandbox_limits(tmp_path: Path) -> None:
    """An inner scope with looser sandbox limits does not loosen the outer scope's: the
    repository code runs under the smallest limit of all active policies."""
    from safehub._enforce.hub_calls import _strictest_sandbox
    from safehub.errors import SandboxError

    outer = tmp_path / "outer.toml"
    outer.write_text('schema = 1\nextends = "default"\n[sandbox]\ntimeout_s = 4.0\n'
                     'memory_mb = 4096\nrequired_layers = ["rlimits"]\n')
    inner = tmp_path / "inner.toml"
    inner.write_text('schema = 1\nextends = "default"\n[sandbox]\nmax_processes = 16\n'
                     'required_layers = ["env"]\n')
    policies = [safehub.policy.load_policy(outer), safehub.policy.load_policy(inner)]
    merged = _strictest_sandbox(policies).model.sandbox
    assert (merged.timeout_s, merged.memory_mb, merged.max_processes) == (4.0, 4096, 16)
    assert set(merged.required_layers) == {
        layer for p in policies for layer in p.model.sandbox.required_layers}

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(
        "import time\nimport torch\n\n\ndef slow():\n    time.sleep(30)\n"
        "    return torch.nn.Linear(1, 1)\n")
    with safehub.enforce(outer), safehub.enforce("default"), pytest.raises(SandboxError):
        torch.hub.load(str(repo), "slow", source="local", trust_repo=True)
