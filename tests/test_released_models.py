"""Released models by name (ernievil2/checkpoint/released.py), against a local stand-in for the download:
an HTTP server on 127.0.0.1 serving checkpoints made from the tiny official fixture."""
import hashlib
import http.server
import threading
import time

import numpy as np
import pytest

from ernievil2 import cli
from ernievil2.checkpoint import load_pretrained, read_model_state, released
from ernievil2.checkpoint.paddlenlp import write_paddlenlp_dir
from ernievil2.checkpoint.released import RECORDED_DIGEST, Release, ReleasedFile, ReleasedModelError, resolve_weights
from ernievil2.checkpoint.state import CheckpointReadError
from ernievil2.commands import convert_checkpoint
from ernievil2.config import check_named_files, load_config
from ernievil2.inference.export import deploy_config
from ernievil2.models import build_model
from ernievil2.registry import ConfigError
from tests.conftest import REPO

TINY_CONFIG = str(REPO / "configs" / "tiny_official_fixture.yaml")


class Server:
    """Serves ``files`` (path -> bytes); counts the requests; ``cut`` paths send half their bytes
    under the full Content-Length, as a dropped connection does."""

    def __init__(self):
        self.files, self.cut, self.requests = {}, set(), []
        self.delay = 0.0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append(self.path)
                time.sleep(owner.delay)
                body = owner.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in owner.cut else body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def fixture_weights(shared_dir):
    return shared_dir / "fixtures" / "official_ernievil2_tiny" / "model.pdparams"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("ERNIEVIL2_HOME", str(home))
    return home / "weights"


def md5(data):
    return hashlib.md5(data).hexdigest()


def publish(monkeypatch, name, release):
    monkeypatch.setitem(released.RELEASED, name, release)


def official_release(server, fixture_weights, md5_sum=None, path="/tiny/OFFICIAL.pdparams"):
    server.files[path] = fixture_weights.read_bytes()
    return Release(files=(ReleasedFile("OFFICIAL.pdparams", server.url + path, md5_sum),), weights="OFFICIAL.pdparams")


def as_array(value):
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def same_state(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(as_array(a[key]), as_array(b[key]), err_msg=key)


def test_first_use_downloads_and_caches_later_uses_do_not(monkeypatch, server, fixture_weights, cache, capfd):
    publish(monkeypatch, "tiny-official", official_release(server, fixture_weights))
    model = build_model(load_config(TINY_CONFIG)["Arch"])
    load_pretrained(model, "tiny-official")
    assert server.requests == ["/tiny/OFFICIAL.pdparams"]
    cached = cache / "tiny-official" / "OFFICIAL.pdparams"
    assert cached.read_bytes() == fixture_weights.read_bytes()
    recorded = (cache / "tiny-official" / ("OFFICIAL.pdparams" + RECORDED_DIGEST)).read_text().strip()
    assert recorded == hashlib.sha256(fixture_weights.read_bytes()).hexdigest()
    err = capfd.readouterr().err
    assert "downloading OFFICIAL.pdparams" in err and server.url in err and "MB/s" in err
    same_state(model.state_dict(), build_and_load(fixture_weights))

    assert resolve_weights("tiny-official") == str(cached)
    same_state(read_model_state("tiny-official"), read_model_state(str(fixture_weights)))
    assert len(server.requests) == 1  # nothing fetched again


def build_and_load(path):
    model = build_model(load_config(TINY_CONFIG)["Arch"])
    load_pretrained(model, str(path))
    return model.state_dict()


def test_a_paddlenlp_release_is_a_checked_folder(monkeypatch, server, fixture_weights, tmp_path, cache):
    # The shape of ernie_vil-2.0-base-zh's entry: model_state.pdparams + config.json, md5s published.
    arch = load_config(TINY_CONFIG)["Arch"]
    made = tmp_path / "made"
    write_paddlenlp_dir(str(made), arch, read_model_state(str(fixture_weights)))
    files = []
    for name in ("model_state.pdparams", "config.json"):
        body = (made / name).read_bytes()
        server.files[f"/nlp/{name}"] = body
        files.append(ReleasedFile(name, f"{server.url}/nlp/{name}", md5(body)))
    publish(monkeypatch, "tiny-nlp", Release(files=tuple(files)))
    assert resolve_weights("tiny-nlp") == str(cache / "tiny-nlp")
    same_state(read_model_state("tiny-nlp"), read_model_state(str(fixture_weights)))
    assert sorted(server.requests) == ["/nlp/config.json", "/nlp/model_state.pdparams"]
    assert not list((cache / "tiny-nlp").glob("*" + RECORDED_DIGEST))  # published md5s, nothing recorded
    convert_checkpoint.main(["to-ours", "tiny-nlp", str(tmp_path / "ours.pdparams")])  # the name works there too
    same_state(read_model_state(str(tmp_path / "ours.pdparams")), read_model_state(str(fixture_weights)))
    assert len(server.requests) == 2


def test_a_folder_whose_config_is_not_an_ernievil_config_is_one_clear_error(tmp_path, fixture_weights):
    arch = load_config(TINY_CONFIG)["Arch"]
    write_paddlenlp_dir(str(tmp_path), arch, read_model_state(str(fixture_weights)))
    (tmp_path / "config.json").write_text('{"vocab_size": 40000, "hidden_size": 768}')  # the flat, pre-2.5 form
    with pytest.raises(CheckpointReadError, match="config.json: not an ErnieViLConfig .*vision_config"):
        read_model_state(str(tmp_path))


def test_a_corrupted_cached_file_is_detected(monkeypatch, server, fixture_weights, cache):
    publish(monkeypatch, "tiny-official", official_release(server, fixture_weights))
    cached = resolve_weights("tiny-official")
    data = bytearray(open(cached, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(cached, "wb").write(bytes(data))
    with pytest.raises(ReleasedModelError, match="sha256 recorded at its download .* delete it to download it again"):
        resolve_weights("tiny-official")
    assert len(server.requests) == 1


def test_a_download_that_fails_its_published_md5_is_not_kept(monkeypatch, server, fixture_weights, cache):
    publish(monkeypatch, "tiny-official", official_release(server, fixture_weights, md5_sum="0" * 32))
    with pytest.raises(ReleasedModelError, match="md5 .*published 0{32}"):
        resolve_weights("tiny-official")
    assert list((cache / "tiny-official").iterdir()) == []


def test_an_interrupted_download_leaves_nothing_that_looks_complete(monkeypatch, server, fixture_weights, cache):
    release = official_release(server, fixture_weights)
    server.cut.add("/tiny/OFFICIAL.pdparams")
    publish(monkeypatch, "tiny-official", release)
    with pytest.raises(ReleasedModelError):
        resolve_weights("tiny-official")
    assert list((cache / "tiny-official").iterdir()) == []  # no file, no record, no temporary
    server.cut.clear()
    assert open(resolve_weights("tiny-official"), "rb").read() == fixture_weights.read_bytes()  # the retry completes


def test_offline_the_error_is_one_line_naming_the_file_the_address_and_the_place(monkeypatch, server, fixture_weights, cache, capfd):
    release = official_release(server, fixture_weights)
    server.close()  # nothing listens there any more: as offline as a test can be without a network
    publish(monkeypatch, "tiny-official", release)
    model = build_model(load_config(TINY_CONFIG)["Arch"])
    assert cli.run(lambda argv: load_pretrained(model, "tiny-official")) == 2
    err = capfd.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: cannot download the released model 'tiny-official'")
    folder = str(cache / "tiny-official")
    assert f"fetch OFFICIAL.pdparams from {server.url}/tiny/OFFICIAL.pdparams into {folder}" in err
    assert "or pass a local file or folder instead of the name" in err
    # Put there by hand, as the message says: used (its digest recorded at first use).
    (cache / "tiny-official").mkdir(parents=True, exist_ok=True)
    (cache / "tiny-official" / "OFFICIAL.pdparams").write_bytes(fixture_weights.read_bytes())
    same_state(read_model_state("tiny-official"), read_model_state(str(fixture_weights)))
    assert (cache / "tiny-official" / ("OFFICIAL.pdparams" + RECORDED_DIGEST)).is_file()


def test_an_unknown_name_lists_the_known_ones(cache):
    with pytest.raises(FileNotFoundError, match=r"not a released model name \(known: .*ernie_vil-2\.0-base-zh.*did you mean 'ernie_vil-2\.0-base-zh'"):
        resolve_weights("ernie_vil-2.0-base")
    assert not cache.exists()


def test_a_released_name_passes_config_checks_without_a_download(tmp_path, cache):
    config = load_config(TINY_CONFIG, ["Global.pretrained=ernie_vil-2.0-base-zh"])
    check_named_files(config)
    config["Global"]["pretrained"] = "PaddlePaddle/ernie_vil-2.0-base-zh"  # PaddleNLP's community name
    check_named_files(config)
    assert not cache.exists()
    config["Global"]["pretrained"] = "ernie_vil-2.0-base"
    with pytest.raises(ConfigError, match="Global.pretrained.*did you mean 'ernie_vil-2.0-base-zh'"):
        check_named_files(config)



def test_processes_that_ask_at_once_download_once(monkeypatch, server, fixture_weights, cache):
    # Each rank of a node reads Global.pretrained at the same moment.
    publish(monkeypatch, "tiny-official", official_release(server, fixture_weights))
    server.delay = 0.5  # long enough that both ask before the first download ends
    paths, errors = [], []

    def resolve():
        try:
            paths.append(resolve_weights("tiny-official"))
        except Exception as err:  # noqa: BLE001  (reported by the assert below)
            errors.append(err)

    threads = [threading.Thread(target=resolve) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(paths) == 2 and paths[0] == paths[1]
    assert server.requests == ["/tiny/OFFICIAL.pdparams"]


def test_an_export_records_the_name_not_this_machines_cache_path(monkeypatch, server, fixture_weights, cache):
    publish(monkeypatch, "tiny-official", official_release(server, fixture_weights))
    config = load_config(TINY_CONFIG)
    model = build_model(config["Arch"])
    load_pretrained(model, "tiny-official")
    assert deploy_config(config, model, "tiny-official", {})["source"]["weights"] == "tiny-official"
