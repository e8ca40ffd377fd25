"""A minimal W3C WebDriver client over httpx, for driving headless Chromium through chromedriver.

Only what the search-page tests (and scripts/search_page_screenshot.py) need:
open a URL, find elements, type (file inputs take a path), click, run a
script, wait for a condition, set the viewport, screenshot.
Selenium would do the same; this keeps the test dependencies to httpx, which
the service tests need anyway.
"""
import base64
import re
import subprocess
import time

import httpx

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
STARTED = re.compile(r"ChromeDriver was started successfully on port (\d+)")


class WebDriverError(AssertionError):
    pass


class ChromeDriver:
    """A chromedriver process on a free loopback port (``--port=0``; its start-up line names the port)."""

    def __init__(self, executable, startup_seconds=30):
        self.process = subprocess.Popen(
            [executable, "--port=0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + startup_seconds
        seen = []
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            seen.append(line)
            match = STARTED.search(line)
            if match:
                self.url = f"http://127.0.0.1:{match.group(1)}"
                return
        self.close()
        raise WebDriverError("chromedriver did not start:\n" + "".join(seen))

    def close(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Session:
    """One browser session; elements are WebDriver element ids."""

    def __init__(self, driver_url, chromium, args, timeout=60):
        self.http = httpx.Client(base_url=driver_url, timeout=timeout)
        options = {"binary": chromium, "args": list(args)}
        capabilities = {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}
        self.id = self._call("POST", "/session", {"capabilities": capabilities})["sessionId"]

    def _call(self, method, path, payload=None):
        response = self.http.request(method, path, json=payload)
        body = response.json()
        value = body.get("value")
        if response.status_code != 200:
            error = value.get("error") if isinstance(value, dict) else value
            message = value.get("message", "") if isinstance(value, dict) else ""
            raise WebDriverError(f"{method} {path}: {error}: {message[:1000]}")
        return value

    def _session(self, method, path, payload=None):
        return self._call(method, f"/session/{self.id}{path}", payload)

    def get(self, url):
        self._session("POST", "/url", {"url": url})

    def find(self, css):
        return self._session("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def type(self, element, text):
        self._session("POST", f"/element/{element}/value", {"text": text})

    def clear(self, element):
        self._session("POST", f"/element/{element}/clear", {})

    def click(self, element):
        self._session("POST", f"/element/{element}/click", {})

    def run(self, script, *args):
        """The value of a script's ``return``; ``arguments[i]`` are ``args``."""
        return self._session("POST", "/execute/sync", {"script": script, "args": list(args)})

    def wait_for(self, script, timeout=60, interval=0.2):
        """Poll ``script`` until it returns something truthy; that value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.run(script)
            if value:
                return value
            time.sleep(interval)
        raise WebDriverError(f"timed out after {timeout} s waiting for: {script}")

    def set_viewport(self, width, height):
        """The page's viewport in CSS pixels, through chromedriver's DevTools passthrough.

        (A window is capped at the headless screen's size, so a tall page cannot be shown by resizing.)
        """
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self._session("POST", "/goog/cdp/execute", {"cmd": "Emulation.setDeviceMetricsOverride", "params": metrics})

    def screenshot(self):
        """PNG bytes of the viewport."""
        return base64.b64decode(self._session("GET", "/screenshot"))

    def close(self):
        try:
            self._call("DELETE", f"/session/{self.id}")
        finally:
            self.http.close()
