"""The inbox page in a real headless Chromium (Debian's chromium and chromium-driver, driven
by Selenium with both paths given, so nothing is downloaded): mail sent by swaks shows up
without a reload, opens, and a hostile HTML message runs nothing and loads nothing."""
from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import ROOT, message
from web_client import wait_web_url

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT = 15.0


def require_browser():
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        reason = "needs " + ", ".join(missing) + " (bash tests/run installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: must not skip)")
        pytest.skip(reason)


class Tracker:
    """The "remote host" a hostile message points at: records every request it gets."""

    def __init__(self):
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/gif")
                self.end_headers()
                self.wfile.write(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def browser():
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,820", "--lang=en-US"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(condition, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def hostile(tracker: Tracker) -> str:
    return f"""<html><head>
<meta http-equiv="refresh" content="0;url={tracker.url}/refresh">
<script>document.documentElement.setAttribute('data-pwned', 'script');
  try {{ top.pwned = 'script'; }} catch (e) {{}} new Image().src = '{tracker.url}/script';</script>
</head><body>
<h1>You won!</h1>
<img src="{tracker.url}/pixel.gif" width="1" height="1">
<img src="x" onerror="document.documentElement.setAttribute('data-pwned', 'onerror'); new Image().src='{tracker.url}/onerror'">
<a id="jslink" href="javascript:document.documentElement.setAttribute('data-pwned','link');location='{tracker.url}/link'">claim</a>
<form action="{tracker.url}/form"><button id="go">go</button></form>
</body></html>"""


def send_html(server, to: str, subject: str, html: str) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.sendmail("promo@example.org", [to], message(
            subject=subject, to=to, body=html, sender="Promo <promo@example.org>",
            extra="MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"))


def test_inbox_shows_mail_live_and_hostile_html_runs_nothing(sqlite_store, gsmtpd_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    server = gsmtpd_server(sqlite_store, web="127.0.0.1:0")
    host, port = wait_web_url(server.log, server.proc)
    tracker = Tracker()
    box = "inbox@test.org"
    try:
        browser.get(f"http://{host}:{port}/#{box}")
        wait_for(lambda: "live" in browser.find_element(By.ID, "status").text, "the event stream")
        browser.execute_script("window.notReloaded = 42")

        result = subprocess.run(["swaks", "--server", f"{server.host}:{server.port}", "--to", box,
                                 "--from", "sender@example.org", "--header", "Subject: Hello from swaks",
                                 "--body", "Plain text, shown as text: <b>not bold</b>"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        first = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#messages li"), "the swaks message")
        assert first[0].find_element(By.CLASS_NAME, "subject").text == "Hello from swaks"
        assert browser.execute_script("return window.notReloaded") == 42          # no reload
        first[0].click()
        text = wait_for(lambda: browser.find_element(By.ID, "text-body").text, "the opened message")
        assert "Plain text, shown as text: <b>not bold</b>" in text                # escaped, as text

        subject = '<img src=x onerror="top.pwned=1">Prize'
        send_html(server, box, subject, hostile(tracker))
        wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#messages li")) == 2, "the hostile message")
        newest = browser.find_elements(By.CSS_SELECTOR, "#messages li")[0]
        assert newest.find_element(By.CLASS_NAME, "subject").text == subject     # text, not markup
        assert not browser.find_elements(By.CSS_SELECTOR, "#messages img")
        newest.click()
        frame = wait_for(lambda: [f for f in browser.find_elements(By.ID, "html-body") if f.is_displayed()],
                         "the HTML body's iframe")[0]
        assert frame.get_attribute("sandbox") == ""
        browser.switch_to.frame(frame)
        wait_for(lambda: browser.find_elements(By.TAG_NAME, "h1"), "the HTML body")
        assert browser.find_element(By.TAG_NAME, "h1").text == "You won!"
        browser.find_element(By.ID, "jslink").click()
        browser.find_element(By.ID, "go").click()
        assert browser.find_element(By.TAG_NAME, "html").get_attribute("data-pwned") is None
        browser.switch_to.default_content()
        assert browser.execute_script("return window.pwned") is None
        assert browser.execute_script("return window.notReloaded") == 42

        # The positive control: asked for remote images, the same frame does reach the
        # tracker, so the test could see a request had one been made before.
        browser.find_element(By.ID, "images").click()
        wait_for(lambda: "/pixel.gif" in tracker.seen, "the remote image once allowed")
        frame = browser.find_element(By.ID, "html-body")
        browser.switch_to.frame(frame)
        wait_for(lambda: browser.execute_script("return document.readyState") == "complete", "the frame")
        assert browser.find_element(By.TAG_NAME, "html").get_attribute("data-pwned") is None
        browser.switch_to.default_content()
        assert tracker.seen == ["/pixel.gif"], tracker.seen        # nothing else, ever: no script, refresh, link

        send_html(server, box, "Your weekly digest", DIGEST)
        wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#messages li")) == 3, "the digest")
        browser.find_elements(By.CSS_SELECTOR, "#messages li")[0].click()
        wait_for(lambda: browser.find_element(By.ID, "headers").text.count("Your weekly digest"), "the digest open")
        browser.switch_to.frame(browser.find_element(By.ID, "html-body"))
        wait_for(lambda: browser.find_elements(By.TAG_NAME, "h2"), "the digest's body")
        browser.switch_to.default_content()
        shot = tmp_path / "inbox.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10000
        if os.environ.get("GSMTPD_SAVE_SCREENSHOT"):
            Path(ROOT / "docs").mkdir(exist_ok=True)
            shutil.copy(shot, ROOT / "docs" / "inbox.png")
    finally:
        tracker.close()


DIGEST = """<div style="font-family: Georgia, serif; max-width: 36em; margin: 1em auto; color: #223">
<h2 style="color: #1f3a5f">This week at Example Co.</h2>
<p>Three things worth your time, picked by the team:</p>
<ol><li>The new dashboard is live.</li><li>Office hours move to Thursday.</li><li>Lunch is on us, Friday.</li></ol>
<p style="color: #667">You get this because you signed up with a disposable address.</p></div>"""
