"""Model packs, the model store and the catalog download (issue 19, part 2).

Everything runs offline: bundles are made here with tiny random networks, and downloads come
from an HTTP server this test starts on localhost (with HTTP Range support, and a mode that
breaks the connection half-way through the first reply).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from medtorch.cli import main
from medtorch.errors import MedTorchInputError
from medtorch.io import write_volume
from medtorch.models.pack import verify_pack
from medtorch.models.store import LicenseRequired, ModelStore
from medtorch.volume import Geometry, Volume

BRATS = ["T1c", "T1", "T2", "FLAIR"]
LICENSE_TEXT = "Test license: use for tests only.\n"


def _bundle(root: Path, channels=BRATS, seed: int = 0) -> Path:
    """A ``medtorch train-seg``-style bundle (write_bundle) with a 1x1x1 convolution: fast to load and run."""
    from medtorch.segment.training import write_bundle

    torch.manual_seed(seed)
    net = torch.nn.Conv3d(len(channels), 3, 1)
    net_def = {"_target_": "torch.nn.Conv3d", "in_channels": len(channels), "out_channels": 3, "kernel_size": 1}
    return write_bundle(root, network_def=net_def, state_dict=net.state_dict(), channel_names=channels,
                        label_names={0: "background", 1: "Necrosis", 2: "Edema"}, label_values=[0, 1, 2],
                        roi_size=[16, 16, 16], extra_metadata={"best_val_dice": 0.5, "train_cases": ["a", "b"],
                                                                "val_cases": ["c"]})


@pytest.fixture
def store_dir(tmp_path, monkeypatch):
    d = tmp_path / "store"
    monkeypatch.setenv("MEDTORCH_MODELS_DIR", str(d))
    monkeypatch.delenv("MEDTORCH_MODELS_CATALOG", raising=False)
    return d


@pytest.fixture(scope="module")
def pack4(tmp_path_factory) -> Path:
    """A 4-channel (BraTS order) segmentation pack made from a train-seg style bundle."""
    from medtorch.models.segmentation import pack_bundle

    root = tmp_path_factory.mktemp("pack4")
    bundle = _bundle(root / "bundle")
    (root / "LICENSE.txt").write_text(LICENSE_TEXT)
    return pack_bundle(bundle, root / "brats_test.zip", name="brats_test", license_file=root / "LICENSE.txt")


def _offline(monkeypatch):
    """No connection can be opened (an air-gapped machine)."""
    def refuse(*a, **k):
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# -- the pack ---------------------------------------------------------------------------------------------


def test_a_pack_carries_channels_labels_terminology_card_and_license(pack4):
    members = verify_pack(pack4)
    assert {"weights.pt", "config.json", "MODEL_CARD.md", "LICENSE.txt", "bundle/configs/metadata.json",
            "bundle/configs/inference.json", "bundle/docs/README.md"} == set(members)
    manifest = json.loads(zipfile.ZipFile(pack4).read("manifest.json"))
    assert manifest["files"]["weights.pt"] == hashlib.sha256(members["weights.pt"]).hexdigest()
    config = json.loads(members["config.json"])
    assert config["kind"] == "segmentation" and config["name"] == "brats_test"
    assert [c["name"] for c in config["input_channels"]] == BRATS
    assert [c["index"] for c in config["input_channels"]] == [0, 1, 2, 3]
    labels = {lab["value"]: lab for lab in config["labels"]}
    assert set(labels) == {1, 2} and labels[1]["name"] == "Necrosis"
    assert labels[1]["type"] == ["SCT", "6574001", "Necrosis"] and "SCT^79654002^Edema" in labels[2]["terminology"]
    card = config["model_card"]
    assert card["reported_dice"] == {"best_validation_dice": 0.5} and "2 training" in card["training_data"]
    assert card["intended_use"]
    assert config["license"]["sha256"] == hashlib.sha256(LICENSE_TEXT.encode()).hexdigest()
    text = members["MODEL_CARD.md"].decode()
    assert "Intended use" in text and "Reported Dice" in text and "0: T1c, 1: T1, 2: T2, 3: FLAIR" in text


def test_a_bundle_without_license_text_needs_one(tmp_path, capsys):
    bundle = _bundle(tmp_path / "b")
    assert main(["models", "pack", str(bundle), "--out", str(tmp_path / "p.zip"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "has no license text" in err and "--license FILE" in err and not (tmp_path / "p.zip").exists()


def test_cli_pack_import_list_verify_remove_offline(pack4, store_dir, tmp_path, monkeypatch, capsys):
    bundle = _bundle(tmp_path / "bundle", seed=1)
    lic = tmp_path / "terms.txt"
    lic.write_text(LICENSE_TEXT)
    out = tmp_path / "mine.zip"
    assert main(["models", "pack", str(bundle), "--out", str(out), "--name", "mine", "--license", str(lic), "-q"]) == 0
    assert json.loads(verify_pack(out)["config.json"])["name"] == "mine"
    _offline(monkeypatch)  # an air-gapped machine: importing needs no network
    assert main(["models", "import", str(out), "--accept-licence"]) == 0
    assert main(["models", "import", str(pack4), "-q"]) == 0  # the same license text: agreed already
    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in listed["models"]] == ["brats_test", "mine"]
    assert listed["models"][0]["input_channels"] == BRATS and listed["models_dir"] == str(store_dir)
    assert main(["models", "verify", "mine"]) == 0 and "every hash matches" in capsys.readouterr().out
    assert (store_dir / "mine" / "bundle" / "models" / "model.pt").is_file()
    assert main(["models", "remove", "mine", "-q"]) == 0
    assert [m.name for m in ModelStore().installed()] == ["brats_test"]
    assert main(["models", "verify", "mine"]) == 2
    err = capsys.readouterr().err
    assert "no model named 'mine'" in err and "brats_test" in err


def test_the_license_is_asked_once(pack4, store_dir, monkeypatch, capsys):
    asked = []
    monkeypatch.setattr("sys.stdin.isatty", lambda: True, raising=False)
    answers = iter(["n", "y"])

    def fake_input(prompt=""):
        asked.append(prompt)
        return next(answers)

    monkeypatch.setattr("builtins.input", fake_input)
    assert main(["models", "import", str(pack4)]) == 2  # declined: nothing installed, nothing recorded
    assert "not agreed" in capsys.readouterr().err and ModelStore().installed() == []
    assert main(["models", "import", str(pack4)]) == 0
    out = capsys.readouterr().out
    assert LICENSE_TEXT.strip() in out and len(asked) == 2
    assert main(["models", "import", str(pack4)]) == 0  # again: not asked
    assert len(asked) == 2
    assert len(json.loads((store_dir / "licenses.json").read_text())) == 1


def test_no_terminal_and_no_agreement_is_refused(pack4, store_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False, raising=False)
    assert main(["models", "import", str(pack4)]) == 2
    assert "--accept-license" in capsys.readouterr().err and ModelStore().installed() == []
    with pytest.raises(LicenseRequired) as exc:
        ModelStore().install(pack4)
    assert exc.value.license_text == LICENSE_TEXT


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes], fix_manifest: bool) -> Path:
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members.update(replace)
    if fix_manifest:
        manifest = json.loads(members["manifest.json"])
        manifest["files"] = {n: hashlib.sha256(d).hexdigest() for n, d in members.items() if n != "manifest.json"}
        members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(dst, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    return dst


def test_a_wrong_hash_in_a_pack_is_refused_before_anything_is_loaded(pack4, store_dir, tmp_path, monkeypatch):
    bad = _rewrite(pack4, tmp_path / "bad.zip", {"bundle/configs/inference.json": b'{"network_def": {}}'}, False)
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(1))
    with pytest.raises(MedTorchInputError, match="failed its SHA-256 check: bundle/configs/inference.json"):
        ModelStore().install(bad, accept_license=True)
    assert loads == [] and ModelStore().installed() == []
    # a member the manifest does not list
    extra = _rewrite(pack4, tmp_path / "extra.zip", {"bundle/configs/evil.py": b"print(1)"}, False)
    with pytest.raises(MedTorchInputError, match="manifest"):
        ModelStore().install(extra, accept_license=True)


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_a_pack_with_a_pickled_payload_is_refused(pack4, store_dir, tmp_path, capsys):
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(1), "x": _Payload()}, buf)
    evil = _rewrite(pack4, tmp_path / "evil.zip", {"weights.pt": buf.getvalue()}, True)  # hashes all correct
    verify_pack(evil)  # the manifest is fine: only weights_only catches it
    with pytest.raises(MedTorchInputError, match="weights_only=True"):
        ModelStore().install(evil, accept_license=True)
    assert "pickled code ran" not in capsys.readouterr().out and ModelStore().installed() == []


# -- using an installed model ----------------------------------------------------------------------------


def _volumes(tmp_path: Path, n: int) -> list[Path]:
    g = Geometry((12, 10, 8), spacing=(1.0, 1.0, 1.5))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp_path / f"ch{i}.nii.gz"
        write_volume(Volume(rng.normal(100, 10, g.shape_zyx).astype(np.float32) + 1.0, g, "scalar"), p)
        paths.append(p)
    return paths


def test_segment_takes_an_installed_model_by_name_and_keeps_the_channel_contract(pack4, store_dir, tmp_path,
                                                                                   capsys):
    ModelStore().install(pack4, accept_license=True)
    vols = _volumes(tmp_path, 4)
    one = main(["segment", "--model", "brats_test", "--in", str(vols[0]), "--out", str(tmp_path / "s1.nrrd"), "-q"])
    err = capsys.readouterr().err
    assert one == 2 and "takes 4 input channel" in err
    assert "0: T1c, 1: T1, 2: T2, 3: FLAIR" in err and not (tmp_path / "s1.nrrd").exists()
    argv = ["segment", "--model", "brats_test", "--out", str(tmp_path / "s4.nrrd"), "-q", "--device", "cpu"]
    for name, v in zip(BRATS, vols):
        argv += ["--in", f"{name}={v}"]
    assert main(argv) == 0 and (tmp_path / "s4.nrrd").is_file()
    # a file changed after installation is found before the model is used
    weights = store_dir / "brats_test" / "bundle" / "models" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    assert main(argv) == 2
    assert "damaged: bundle/models/model.pt was changed" in capsys.readouterr().err
    with pytest.raises(MedTorchInputError, match="no model named 'nothing'"):
        ModelStore().resolve("nothing")


# -- downloads from a local server --------------------------------------------------------------------------


class _Server:
    """A localhost HTTP server of ``files`` (path -> bytes) with Range support; ``break_first``
    paths break the connection half-way through their first reply. ``requests`` records
    ``(path, Range header, bytes sent)``."""

    def __init__(self, files: dict[str, bytes], break_first: tuple[str, ...] = ()):
        self.files, self.break_first, self.requests = files, set(break_first), []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                path = self.path.split("://", 1)[-1]
                path = path[path.index("/"):] if "://" in self.path else path
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    server.requests.append((self.path, self.headers.get("Range"), 0))
                    return
                rng = self.headers.get("Range")
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                body = data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path in server.break_first:
                    server.break_first.discard(path)
                    body = body[: len(data) // 2]
                    self.close_connection = True
                # recorded before the reply is sent: the client may return (and the test read
                # ``requests``) before this thread runs again
                server.requests.append((self.path, rng, len(body)))
                self.wfile.write(body)
                self.wfile.flush()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_an_interrupted_download_resumes_at_its_offset(tmp_path, monkeypatch):
    from medtorch.models.download import download_file

    monkeypatch.setenv("no_proxy", "*")
    data = np.random.default_rng(1).bytes(3 * 2**20 + 123)
    sha = hashlib.sha256(data).hexdigest()
    with _Server({"/m.zip": data}, break_first=("/m.zip",)) as srv:
        dest = tmp_path / "m.zip"
        with pytest.raises(MedTorchInputError, match="ended early") as exc:
            download_file(srv.url + "/m.zip", dest, sha, "sha256")
        assert "again" in exc.value.fix
        part = tmp_path / "m.zip.part"
        half = part.stat().st_size
        assert half == len(data) // 2 and not dest.exists()
        assert download_file(srv.url + "/m.zip", dest, sha, "sha256") == dest
        assert dest.read_bytes() == data and not part.exists()
        (p1, r1, n1), (p2, r2, n2) = srv.requests
        assert r1 is None and r2 == f"bytes={half}-" and n2 == len(data) - half  # resumed, not restarted


def test_a_download_with_a_wrong_hash_is_deleted_and_refused(tmp_path, monkeypatch):
    from medtorch.models.download import download_file

    monkeypatch.setenv("no_proxy", "*")
    with _Server({"/m.zip": b"not the published file"}) as srv:
        with pytest.raises(MedTorchInputError, match="does not have the published sha1"):
            download_file(srv.url + "/m.zip", tmp_path / "m.zip", "0" * 40, "sha1")
    assert list(tmp_path.iterdir()) == []


def test_the_download_goes_through_the_environments_proxy(tmp_path, monkeypatch):
    from medtorch.models.download import download_file

    data = b"model bytes"
    with _Server({"/files/m.zip": data}) as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.setenv("no_proxy", "")
        url = "http://models.invalid/files/m.zip"  # a host that does not exist: only the proxy can answer
        download_file(url, tmp_path / "m.zip", hashlib.sha256(data).hexdigest(), "sha256")
        assert proxy.requests[0][0] == url  # the proxy was asked for the full address


def _zoo_zip(bundle: Path) -> bytes:
    """A bundle zipped as the model zoo publishes it: one top folder named after the bundle."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(bundle.rglob("*")):
            if p.is_file():
                zf.write(p, f"{bundle.name}/{p.relative_to(bundle).as_posix()}")
    return buf.getvalue()


def test_a_catalog_download_asks_first_then_installs_a_pack_like_an_import(store_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("no_proxy", "*")
    bundle = _bundle(tmp_path / "zoo_brats")
    (bundle / "LICENSE").write_text(LICENSE_TEXT)
    data = _zoo_zip(bundle)
    with _Server({"/zoo_brats_v0.1.0.zip": data}) as srv:
        cat = tmp_path / "catalog.json"
        cat.write_text(json.dumps({"models": [{
            "name": "zoo_brats", "version": "0.1.0", "url": srv.url + "/zoo_brats_v0.1.0.zip", "hash_type": "sha1",
            "hash": hashlib.sha1(data).hexdigest(), "license": "Test", "terms": "Test terms: cite the data."}]}))
        monkeypatch.setenv("MEDTORCH_MODELS_CATALOG", str(cat))
        monkeypatch.setattr("sys.stdin.isatty", lambda: True, raising=False)
        seen = []

        def answer(prompt=""):
            seen.append(len(srv.requests))  # requests made before the user answered
            return "y"

        monkeypatch.setattr("builtins.input", answer)
        assert main(["models", "download", "zoo_brats", "-q"]) == 0
        assert seen == [0] and len(srv.requests) == 1
        assert "Test terms" in capsys.readouterr().out
        assert not (store_dir / "downloads" / "zoo_brats_v0.1.0.zip").exists()
        downloaded = ModelStore().verify("zoo_brats")
        assert downloaded.source == srv.url + "/zoo_brats_v0.1.0.zip"
        # the same bundle packed by hand and imported gives the same model
        from medtorch.models.segmentation import pack_bundle

        pack = pack_bundle(bundle, tmp_path / "by_hand.zip", name="zoo_brats")
        imported = ModelStore(tmp_path / "other_store").install(pack, accept_license=True)
        assert imported.config == downloaded.config
        assert verify_pack(pack) == verify_pack(downloaded.path / "pack.zip")
        assert ModelStore().resolve("zoo_brats").endswith("bundle")


def test_the_built_in_catalog_has_published_hashes_and_no_download_at_import():
    import importlib

    import medtorch.models.catalog as catalog

    importlib.reload(catalog)  # importing it opens no connection (nothing to assert but that it is quick)
    for e in catalog.CATALOG.values():
        assert e.url.startswith("https://") and e.hash_type == "sha1" and len(e.hash) == 40
        assert int(e.hash, 16) and e.terms and e.license
    assert catalog.CATALOG["brats_mri_segmentation"].input_channels == ("T1c", "T1", "T2", "FLAIR")
    with pytest.raises(MedTorchInputError, match="brats_mri_segmentation"):
        catalog.catalog_entry("no_such_model")
