"""The search page in headless Chromium, against tools/serve.py running as a real process on 127.0.0.1.

Two ways in. The page runs a search on load when the URL carries ``?q=``:
Chromium's ``--dump-dom`` with a virtual-time budget waits for the fetch and
the thumbnail loads, then prints the DOM, which the test reads. And a user's
way: chromedriver (through the small W3C client in ``tests/webdriver.py``)
types a query, submits it, uploads an image file, switches what an image
searches, and follows the page's link that reproduces the query.

Chromium and chromedriver are installed by ``scripts/install.sh --browser``;
without them these tests skip, except in CI (``CI=true``) where they fail.
"""
import base64
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
from tests.webdriver import ChromeDriver, Session

TINY_CONFIG = str(REPO / "configs" / "tiny_official_fixture.yaml")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
STARTUP_SECONDS = 120


def find_program(names, package):
    path = next(filter(None, map(shutil.which, names)), None)
    if path is None:
        message = f"none of {', '.join(names)} found on PATH (scripts/install.sh --browser installs {package})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def chromium():
    return find_program(CHROMIUM_NAMES, "chromium")


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
def fixture_dir(shared_dir):
    return shared_dir / "fixtures" / "official_ernievil2_tiny"


@pytest.fixture(scope="module")
def server(chromium, fixture_dir, tmp_path_factory):
    """Export, build the gallery with tools/build_index.py, and serve it with tools/serve.py."""
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
    """Collects the body's state, the status line, the timing, the result images and captions from a dumped DOM."""

    def __init__(self):
        super().__init__()
        self.state = None
        self.images = []
        self.captions = []
        self.text = {"status": "", "timing": ""}
        self.server_ms = None
        self._in = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.state = attrs.get("data-state")
        elif tag == "img" and attrs.get("id") != "preview":
            self.images.append(attrs)
        if attrs.get("id") == "timing":
            self.server_ms = attrs.get("data-server-ms")
        self._in = attrs.get("id") if attrs.get("id") in self.text else None
        if tag == "p" and attrs.get("class") == "caption":
            self.captions.append("")
            self._in = "caption"

    def handle_data(self, data):
        if self._in == "caption":
            self.captions[-1] += data
        elif self._in:
            self.text[self._in] += data

    def handle_endtag(self, tag):
        self._in = None


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


def api_search(server, **body):
    response = httpx.post(f"{server}/search", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_a_query_in_the_url_shows_the_top_k_images_with_captions(chromium, server):
    query = "一张草莓的照片"
    page = open_page(chromium, f"{server}/?" + urllib.parse.urlencode({"q": query, "k": 5}))
    expected = api_search(server, text=query, k=5)
    assert page.state == "done", page.text["status"]
    assert [img["alt"] for img in page.images] == [hit["id"] for hit in expected]
    assert [img["src"] for img in page.images] == [hit["thumbnail"] for hit in expected]
    assert page.captions == [hit["text"] for hit in expected]
    # Set by the page when each thumbnail has actually loaded and decoded.
    assert all(img.get("data-loaded") == "true" for img in page.images)
    assert "5 个结果" in page.text["status"]
    assert float(page.server_ms) > 0 and f"服务器 {page.server_ms} ms" in page.text["timing"]


def test_a_rejected_query_is_shown_as_an_error(chromium, server):
    page = open_page(chromium, f"{server}/?" + urllib.parse.urlencode({"q": "长" * 600}))
    assert page.state == "error"
    assert "600 characters" in page.text["status"]
    assert page.images == []


# --- as a user: typing, uploading, following the link (chromedriver) -----------------

WINDOW = "--window-size=1200,1000"
READ_RESULTS = """
return [...document.querySelectorAll('#results figure')].map(f => {
  const img = f.querySelector('img'), caption = f.querySelector('.caption');
  return {alt: img && img.alt, src: img && img.getAttribute('src'), loaded: img && img.dataset.loaded,
          caption: caption && caption.textContent};
});
"""
READ_PAGE = """
const t = document.getElementById('timing'), link = document.getElementById('permalink');
return {state: document.body.dataset.state, status: document.getElementById('status').textContent,
        timing: t.textContent, serverMs: t.dataset.serverMs, totalMs: t.dataset.totalMs,
        link: document.getElementById('reproduce').hidden ? null : link.href,
        note: document.getElementById('reproduce-note').textContent, layout: document.getElementById('results').className,
        target: document.querySelector('input[name=target]:checked').value, k: document.getElementById('k').value};
"""
TIMING = re.compile(r"用时 \d+ ms（服务器 [\d.]+ ms）")


@pytest.fixture(scope="module")
def browser(chromium):
    driver = ChromeDriver(find_program(("chromedriver",), "chromium-driver"))
    with tempfile.TemporaryDirectory() as profile:
        try:
            session = Session(driver.url, chromium, [*CHROMIUM_FLAGS, WINDOW, f"--user-data-dir={profile}"])
            try:
                yield session
            finally:
                session.close()
        finally:
            driver.close()


def settle(browser, action):
    """Run ``action`` and wait for the search it starts to finish; the page's state and results."""
    browser.run("document.body.dataset.state = 'waiting'")
    action()
    browser.wait_for("const s = document.body.dataset.state; return (s === 'done' || s === 'error') && s")
    return browser.run(READ_PAGE), browser.run(READ_RESULTS)


def check_image_hits(page, hits, expected):
    assert page["state"] == "done", page["status"]
    assert f"{len(expected)} 个结果" in page["status"]
    assert [hit["alt"] for hit in hits] == [hit["id"] for hit in expected]
    assert [hit["caption"] for hit in hits] == [hit["text"] for hit in expected]
    assert all(hit["loaded"] == "true" for hit in hits)
    assert TIMING.fullmatch(page["timing"]), page["timing"]
    assert float(page["serverMs"]) > 0 and float(page["totalMs"]) >= float(page["serverMs"])


def test_a_typed_query_shows_captioned_images_the_time_and_a_link_that_reproduces_it(browser, server):
    query = "一张折叠椅的照片"
    browser.get(f"{server}/")
    box = browser.find("#q")
    browser.type(box, query)
    k = browser.find("#k")
    browser.clear(k)
    browser.type(k, "6")
    page, hits = settle(browser, lambda: browser.click(browser.find("#search button[type=submit]")))
    expected = api_search(server, text=query, k=6)
    check_image_hits(page, hits, expected)
    assert page["layout"] == "images"
    link = urllib.parse.urlsplit(page["link"])
    assert f"{link.scheme}://{link.netloc}" == server
    assert urllib.parse.parse_qs(link.query) == {"q": [query], "k": ["6"]}
    # Following the link runs the same query again, in a fresh page load.
    page, hits = settle(browser, lambda: browser.get(page["link"]))
    check_image_hits(page, hits, expected)
    assert browser.run("return document.getElementById('q').value") == query


def test_an_uploaded_image_finds_its_captions_and_similar_images(browser, server, fixture_dir, tmp_path):
    line = (fixture_dir / "test.coco_cn.data").read_text("utf-8").splitlines()[3]
    caption, image_id, b64 = line.split("\t")[:3]
    photo = tmp_path / "query.jpg"
    photo.write_bytes(base64.b64decode(b64))
    browser.get(f"{server}/?k=4")
    browser.click(browser.find("input[name=target][value=texts]"))
    page, hits = settle(browser, lambda: browser.type(browser.find("#file"), str(photo)))
    expected = api_search(server, image=b64, target="texts", k=4)
    assert page["state"] == "done", page["status"]
    assert page["layout"] == "texts" and "4 个结果" in page["status"]
    assert [hit["caption"] for hit in hits] == [hit["text"] for hit in expected]
    # Each caption is shown with the image it describes.
    assert [hit["src"] for hit in hits] == [hit["thumbnail"] for hit in expected]
    assert all(hit["loaded"] == "true" for hit in hits)
    assert TIMING.fullmatch(page["timing"]), page["timing"]
    assert browser.run("return document.getElementById('preview').hidden") is False

    # The same upload, now searching images: the photo itself comes first.
    page, hits = settle(browser, lambda: browser.click(browser.find("input[name=target][value=images]")))
    expected = api_search(server, image=b64, target="images", k=4)
    check_image_hits(page, hits, expected)
    assert hits[0]["alt"] == image_id and hits[0]["caption"] == caption

    # The link keeps what a URL can carry (target and k) and says that the image is not in it.
    link = urllib.parse.urlsplit(page["link"])
    assert urllib.parse.parse_qs(link.query) == {"image": ["upload"], "target": ["images"], "k": ["4"]}
    assert "带不了上传的图片" in page["note"]
    browser.get(page["link"])
    page = browser.run(READ_PAGE)
    assert (page["state"], page["target"], page["k"]) == ("idle", "images", "4")
    assert "链接不含上传的图片" in page["status"]
    assert browser.run(READ_RESULTS) == []


def test_a_bad_upload_is_shown_as_an_error(browser, server, tmp_path):
    junk = tmp_path / "not_a_photo.jpg"
    junk.write_bytes(b"this is not an image")
    browser.get(f"{server}/")
    page, hits = settle(browser, lambda: browser.type(browser.find("#file"), str(junk)))
    assert page["state"] == "error" and "uploaded image: undecodable image" in page["status"]
    assert hits == []
