"""The search page in headless Chromium, against tools/serve.py running as a real process on 127.0.0.1.

The page runs a search on load when the URL carries ``?q=``; Chromium's
``--dump-dom`` with a virtual-time budget waits for the fetch and the thumbnail
loads, then prints the DOM, which the test reads. Chromium is installed by
``scripts/install.sh``; without it these tests skip, except in CI (``CI=true``)
where they fail.
"""
import html.parser
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

import httpx
import pytest

from ernievil2.config import load_config
from ernievil2.inference.export import export_model, load_model
from tests.conftest import REPO

TINY_CONFIG = str(REPO / "configs" / "tiny_official_fixture.yaml")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
STARTUP_SECONDS = 120


@pytest.fixture(scope="module")
def chromium():
    path = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if path is None:
        message = f"none of {', '.join(CHROMIUM_NAMES)} found on PATH (scripts/install.sh installs chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


# Uvicorn's start-up line names the port it bound (the server is started with --port 0, so no other
# process can take the port between choosing it and binding it).
LISTENING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


def wait_for_url(process, log_path):
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        match = LISTENING.search(log_path.read_text(encoding="utf-8", errors="replace"))
        if match:
            return match.group(1)
        time.sleep(0.5)
    raise AssertionError(f"the server did not start; log:\n{log_path.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def server(chromium, shared_dir, tmp_path_factory):
    """Export, build the gallery with tools/build_index.py, and serve it with tools/serve.py."""
    fixture_dir = shared_dir / "fixtures" / "official_ernievil2_tiny"
    work = tmp_path_factory.mktemp("browser")
    config = load_config(TINY_CONFIG)
    weights = str(fixture_dir / "model.pdparams")
    export_model(load_model(config, weights), config, weights, str(work / "export"))
    build = subprocess.run(
        [sys.executable, str(REPO / "tools" / "build_index.py"), "--model", str(work / "export"),
         "--tsv", str(fixture_dir / "test.coco_cn.data"), "--output", str(work / "index")],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    log_path = work / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "tools" / "serve.py"), "--model", str(work / "export"),
             "--index", str(work / "index"), "--host", "127.0.0.1", "--port", "0", "--threads", "1"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        url = wait_for_url(process, log_path)
        assert httpx.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class PageReader(html.parser.HTMLParser):
    """Collects the body's state, the status line and the result images from a dumped DOM."""

    def __init__(self):
        super().__init__()
        self.state = None
        self.images = []
        self.status = ""
        self._in_status = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.state = attrs.get("data-state")
        elif tag == "img":
            self.images.append(attrs)
        self._in_status = attrs.get("id") == "status"

    def handle_data(self, data):
        if self._in_status:
            self.status += data

    def handle_endtag(self, tag):
        self._in_status = False


def open_page(chromium, url):
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000",
             "--dump-dom", url],
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    page = PageReader()
    page.feed(result.stdout)
    return page


def test_a_query_in_the_url_shows_the_top_k_images(chromium, server):
    query = "一张草莓的照片"
    page = open_page(chromium, f"{server}/?" + urllib.parse.urlencode({"q": query, "k": 5}))
    expected = httpx.post(f"{server}/search", json={"text": query, "k": 5}, timeout=30).json()["results"]
    assert page.state == "done", page.status
    assert [img["alt"] for img in page.images] == [hit["id"] for hit in expected]
    assert [img["src"] for img in page.images] == [hit["thumbnail"] for hit in expected]
    # Set by the page when each thumbnail has actually loaded and decoded.
    assert all(img.get("data-loaded") == "true" for img in page.images)
    assert "5" in page.status


def test_a_rejected_query_is_shown_as_an_error(chromium, server):
    page = open_page(chromium, f"{server}/?" + urllib.parse.urlencode({"q": "长" * 600}))
    assert page.state == "error"
    assert "600 characters" in page.status
    assert page.images == []
