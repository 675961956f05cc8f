"""A headless Chromium driven over the DevTools protocol (CDP), for the browser tests.

Only what the tests need: open a page, evaluate JavaScript, wait for a condition, press keys,
take a screenshot. The websocket client is aiohttp's (which trame installs); the browser is the
system's ``chromium`` (Debian: ``apt-get install chromium``), never downloaded.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """``async with Browser() as page:`` a headless Chromium with one page (``page`` is a :class:`Page`)."""

    def __init__(self, executable: str, width: int = 1400, height: int = 1000) -> None:
        self.executable = executable
        self.size = (width, height)
        self.profile = tempfile.mkdtemp(prefix="medtorch-chromium-")
        self.process: subprocess.Popen[bytes] | None = None
        self.session: Any = None
        self.page: Page | None = None

    async def __aenter__(self) -> Page:
        import aiohttp

        self.process = subprocess.Popen(
            [self.executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit {self.process.poll()})")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json(content_type=None)
        url = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
        ws = await self.session.ws_connect(url, max_msg_size=0)
        self.page = Page(ws)
        await self.page.send("Page.enable")
        await self.page.send("Runtime.enable")
        await self.page.send("Emulation.setDeviceMetricsOverride", width=self.size[0], height=self.size[1],
                             deviceScaleFactor=1, mobile=False)
        return self.page

    async def __aexit__(self, *exc: object) -> None:
        if self.page is not None:
            await self.page.ws.close()
        if self.session is not None:
            await self.session.close()
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        await self.ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = await asyncio.wait_for(self.ws.receive(), timeout=120)
            if message.type.name != "TEXT":
                raise RuntimeError(f"the DevTools connection closed ({message.type.name})")
            data = json.loads(message.data)
            if data.get("id") == ident:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return dict(data.get("result", {}))

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 60.0, interval: float = 0.05) -> Any:
        """Evaluate ``expression`` until it is truthy; its value. Raises TimeoutError with the last value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(interval)
        raise TimeoutError(f"waited {timeout:.0f} s for {expression!r} (last value {value!r})")

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def press(self, key: str, times: int = 1) -> None:
        codes = {"ArrowRight": 39, "ArrowLeft": 37, "ArrowUp": 38, "ArrowDown": 40, "PageUp": 33, "PageDown": 34}
        for _ in range(times):
            for kind in ("rawKeyDown", "keyUp"):
                await self.send("Input.dispatchKeyEvent", type=kind, key=key, code=key,
                                windowsVirtualKeyCode=codes[key], nativeVirtualKeyCode=codes[key])

    async def click(self, selector: str) -> None:
        box = await self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    async def screenshot(self, path: Path) -> Path:
        result = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(result["data"]))
        return path


#: JavaScript: statistics of an <img>'s pixels (drawn into a canvas): its size, the share of
#: pixels that are not black and a checksum, or null while it has no image
IMAGE_STATS_JS = """
((selector) => {
  const img = document.querySelector(selector);
  if (!img || !img.complete || !img.naturalWidth || !img.src.startsWith('data:image/png')) return null;
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let lit = 0, sum = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] + d[i + 1] + d[i + 2] > 30) lit++;
    sum = (sum * 31 + d[i] + 7 * d[i + 1] + 13 * d[i + 2]) % 1000000007;
  }
  return {width: c.width, height: c.height, nonBlack: lit / (d.length / 4), checksum: sum, src: img.src.length};
})
"""
