"""The page at / as a person uses it, in headless Chromium driven by selenium
(run by gateway/tests/browser.rs). Each mode prints one JSON report; the
caller asserts on it and checks the gateway's state over HTTP.

    page.py MODE BASE WORKDIR

signin  (a gateway that requires a token) a wrong password gets a message
        in words and the form stays usable; the right one then signs in
        without a reload; the empty state; a signed-in preview (bytes
        fetched with the token) and download (the token in a form post).
browse  folders and breadcrumbs, search as you type (substring, any
        case), "no match" apart from "empty", sorting, a new folder and an
        upload into it, a whole folder chosen with its paths, previews,
        thumbnails, selection with zip download and bulk delete, no
        developer text, a favicon and a name.
uploads an empty file, a running upload named as running with its time
        left, pause / resume / cancel, clear finished, and a creation
        request that fails (the browser offline) retried until it passes.
clash   a name that exists: the choice replace / keep both / skip, and
        "do the same for the others".
phone   390 x 844: no sideways scroll, every button on screen, names
        readable.
a11y    axe-core on the page, its dialogs and the sign-in form, in light
        and dark: the violations of impact serious or critical.

With STEP_PAGE_SHOTS=DIR the modes save screenshots there, each at
1280 x 900 and 390 x 844 (page-NAME-desktop.png, page-NAME-phone.png).
"""

import base64
import hashlib
import json
import os
import shutil
import sys
import time
import urllib.parse
import urllib.request
import zipfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

PATIENCE = 60
DESKTOP = (1280, 900)
PHONE = (390, 844)
SHOTS = os.environ.get("STEP_PAGE_SHOTS")

# A 2x2 PNG (red), and a bigger one for a visible preview.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg==")


def png(w, h, rgb):
    import struct
    import zlib
    raw = b"".join(b"\x00" + bytes(rgb) * w for _ in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def driver(workdir, size=DESKTOP):
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--hide-scrollbars", f"--window-size={size[0]},{size[1]}"):
        opts.add_argument(a)
    downloads = os.path.join(workdir, "downloads")
    os.makedirs(downloads, exist_ok=True)
    opts.add_experimental_option("prefs", {
        "download.default_directory": downloads,
        "download.prompt_for_download": False,
    })
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    d = webdriver.Chrome(options=opts, service=service)
    d.set_window_size(*size)
    d.downloads = downloads
    return d


def viewport(d, size):
    """Sets the viewport (not the window) to size, as a phone has it."""
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": size[0] < 600})


def shot(d, name):
    if not SHOTS:
        return
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        viewport(d, size)
        time.sleep(0.4)
        d.save_screenshot(os.path.join(SHOTS, f"page-{name}-{label}.png"))
    viewport(d, DESKTOP)


def wait(d, cond, timeout=PATIENCE):
    return WebDriverWait(d, timeout).until(cond)


def http(base, method, path, body=None, headers=None, token=None):
    h = dict(headers or {})
    if token:
        h["Authorization"] = "Bearer " + token
    req = urllib.request.Request(base + path, data=body, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def quote(key):
    return "/files/" + "/".join(urllib.parse.quote(s, safe="") for s in key.split("/"))


def put(base, key, data, token=None):
    status, _ = http(base, "PUT", quote(key), data, token=token)
    assert status == 201, (key, status)


def get(base, key, token=None):
    return http(base, "GET", quote(key), token=token)


def make(workdir, name, data):
    path = os.path.join(workdir, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def row_names(d):
    # In one script: the list re-renders while it loads.
    return d.execute_script(
        "return [...document.querySelectorAll('#file-rows td.name .open span, #file-rows td.key')]"
        ".map(e => e.textContent)")


def listed(d, names):
    wait(d, lambda d: all(n in row_names(d) for n in names))


def status_text(d):
    return d.execute_script("const s = document.getElementById('list-status'); return s.hidden ? '' : s.textContent")


def open_page(d, base, hash_=""):
    d.get(base + "/" + hash_)
    wait(d, lambda d: d.execute_script("return document.readyState") == "complete")


def search(d, text):
    box = d.find_element(By.ID, "search")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    if text:
        box.send_keys(text)


def upload_li(d, key):
    return d.find_element(By.CSS_SELECTOR, f'#upload-rows li[data-name="{key}"]')


def wait_upload(d, key, states=("done",)):
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, f'#upload-rows li[data-name="{key}"]')
         and upload_li(d, key).get_attribute("class") in states)
    return upload_li(d, key)


def click_dialog(d, dialog, button):
    wait(d, EC.visibility_of_element_located((By.ID, dialog)))
    d.find_element(By.ID, button).click()
    wait(d, EC.invisibility_of_element_located((By.ID, dialog)))


# ------------------------------------------------------------------ signin


def signin(base, workdir):
    report = {}
    d = driver(workdir)
    try:
        open_page(d, base)
        wait(d, EC.visibility_of_element_located((By.ID, "login")))
        d.find_element(By.ID, "username").send_keys("alice")
        d.find_element(By.ID, "password").send_keys("not her password")
        submit = d.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]")
        submit.click()
        # Whatever the page shows as an alert (role=alert), once it says something.
        said = ("return [...document.querySelectorAll('[role=alert]')]"
                ".filter(e => e.offsetParent !== null && e.textContent.trim()).map(e => e.textContent.trim())")
        try:
            wait(d, lambda d: d.execute_script(said), timeout=15)
            report["wrong_password_message"] = " ".join(d.execute_script(said))
        except Exception:
            report["wrong_password_message"] = None
        report["submit_enabled"] = submit.is_enabled()
        shot(d, "signin-error")
        pw = d.find_element(By.ID, "password")
        pw.send_keys(Keys.CONTROL, "a")
        pw.send_keys(Keys.DELETE)
        # Open mode: alice's password is md5("alice"), STEP's rule.
        pw.send_keys(hashlib.md5(b"alice").hexdigest())
        submit.click()
        try:
            wait(d, EC.invisibility_of_element_located((By.ID, "login")), timeout=15)
            report["signed_in_as"] = d.find_element(By.ID, "who-name").text
        except Exception:
            report["signed_in_as"] = None
            print(json.dumps(report), flush=True)
            return
        wait(d, lambda d: status_text(d) != "" and "Loading" not in status_text(d))
        report["empty_text"] = status_text(d)
        shot(d, "empty")
        # A preview and a download need her token.
        img = make(workdir, "sunset.png", png(480, 300, (230, 120, 40)))
        d.find_element(By.ID, "file-input").send_keys(img)
        wait_upload(d, "sunset.png")
        listed(d, ["sunset.png"])
        d.find_element(By.CSS_SELECTOR, '#file-rows tr[data-key="sunset.png"] .open').click()
        wait(d, lambda d: d.execute_script(
            "const i = document.querySelector('#preview-body img'); return i && i.naturalWidth"))
        report["preview_src"] = d.execute_script("return document.querySelector('#preview-body img').src")[:5]
        report["preview_width"] = d.execute_script("return document.querySelector('#preview-body img').naturalWidth")
        d.find_element(By.ID, "preview-download").click()
        target = os.path.join(d.downloads, "sunset.png")
        wait(d, lambda d: os.path.exists(target) and os.path.getsize(target) > 0)
        time.sleep(0.5)
        report["downloaded_md5"] = hashlib.md5(open(target, "rb").read()).hexdigest()
        report["uploaded_md5"] = hashlib.md5(open(img, "rb").read()).hexdigest()
    finally:
        d.quit()
    print(json.dumps(report), flush=True)


# ------------------------------------------------------------------ browse


def seed(base):
    put(base, "docs/readme.txt", b"Read me first.\nSecond line.\n")
    put(base, "docs/Report 2024.txt", b"The yearly report.\n" * 20)
    put(base, "docs/old/a.txt", b"old a")
    put(base, "docs/old/deep/b.txt", b"old b")
    put(base, "docs/manual.pdf", b"%PDF-1.4\n%fake\n")
    put(base, "pics/otter.png", png(320, 200, (200, 120, 60)))
    put(base, "pics/sky.png", png(320, 200, (60, 120, 220)))
    put(base, "tiny.txt", b"abc")
    time.sleep(1.1)
    put(base, "big.bin", os.urandom(100_000))
    put(base, "middle.txt", b"m" * 1000)


def browse(base, workdir):
    seed(base)
    report = {}
    d = driver(workdir)
    try:
        open_page(d, base)
        listed(d, ["tiny.txt"])
        time.sleep(0.5)
        report["title"] = d.title
        report["root_rows"] = row_names(d)
        if "docs" not in report["root_rows"]:
            # No folders: the rest cannot be reached.
            print(json.dumps(report), flush=True)
            return
        report["body_text"] = d.find_element(By.TAG_NAME, "body").text
        report["icon_status"] = d.execute_script(
            "return fetch(document.querySelector('link[rel=icon]').href).then(r => r.status)")
        shot(d, "folders")
        # Sorting: by size, largest first; by date, newest first.
        Select(d.find_element(By.ID, "sort")).select_by_value("size:desc")
        report["by_size"] = row_names(d)
        Select(d.find_element(By.ID, "sort")).select_by_value("date:desc")
        report["by_date"] = row_names(d)
        Select(d.find_element(By.ID, "sort")).select_by_value("name:asc")
        # Into a folder, and back by its breadcrumb.
        d.find_element(By.CSS_SELECTOR, '#file-rows tr[data-folder="docs/"] .open').click()
        listed(d, ["readme.txt", "old"])
        report["crumbs"] = d.find_element(By.ID, "crumbs").text
        report["docs_rows"] = row_names(d)
        # Search as you type: any case, anywhere in the name, below this folder.
        search(d, "EPOR")
        wait(d, lambda d: row_names(d) == ["Report 2024.txt"])
        report["search_hit"] = row_names(d)
        search(d, "no such words")
        wait(d, lambda d: "matches" in status_text(d))
        report["miss_text"] = status_text(d)
        search(d, "")
        listed(d, ["readme.txt"])
        # Previews: text, then the next ones by the arrow key.
        d.find_element(By.CSS_SELECTOR, '#file-rows tr[data-key="docs/readme.txt"] .open').click()
        wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#preview-body pre"))
        report["text_preview"] = d.find_element(By.CSS_SELECTOR, "#preview-body pre").text
        d.find_element(By.ID, "preview-prev").click()
        wait(d, lambda d: "PDF" in d.find_element(By.ID, "preview-body").text)
        report["pdf_preview"] = d.find_element(By.ID, "preview-body").text
        d.find_element(By.ID, "preview-close").click()
        # Thumbnails and an image preview.
        open_page(d, base, "#/pics/")
        listed(d, ["otter.png", "sky.png"])
        wait(d, lambda d: d.execute_script(
            "return [...document.querySelectorAll('img.thumb')].filter(i => i.naturalWidth > 0).length") == 2)
        report["thumbnails"] = 2
        d.find_element(By.CSS_SELECTOR, '#file-rows tr[data-key="pics/otter.png"] .open').click()
        wait(d, lambda d: d.execute_script(
            "const i = document.querySelector('#preview-body img'); return i && i.naturalWidth"))
        report["image_preview_width"] = d.execute_script("return document.querySelector('#preview-body img').naturalWidth")
        shot(d, "preview")
        d.find_element(By.ID, "preview").send_keys(Keys.ESCAPE)
        wait(d, EC.invisibility_of_element_located((By.ID, "preview")))
        # A new folder, and a file uploaded into it.
        d.find_element(By.ID, "new-folder").click()
        wait(d, EC.visibility_of_element_located((By.ID, "folder-dialog")))
        d.find_element(By.ID, "folder-name").send_keys("holiday 2025")
        d.find_element(By.CSS_SELECTOR, "#folder-form button[type=submit]").click()
        wait(d, lambda d: "holiday" in d.find_element(By.ID, "folder-title").text)
        wait(d, lambda d: "new and empty" in status_text(d))
        report["new_folder_text"] = status_text(d)
        report["new_folder_hash"] = d.execute_script("return location.hash")
        note = make(workdir, "plan.txt", b"the plan")
        d.find_element(By.ID, "file-input").send_keys(note)
        wait_upload(d, "pics/holiday 2025/plan.txt")
        listed(d, ["plan.txt"])
        # A whole folder with its sub-folders.
        make(workdir, "album/one.txt", b"one")
        make(workdir, "album/inner/two.txt", b"two")
        d.find_element(By.ID, "folder-input").send_keys(os.path.join(workdir, "album"))
        wait_upload(d, "pics/holiday 2025/album/inner/two.txt")
        wait_upload(d, "pics/holiday 2025/album/one.txt")
        listed(d, ["album", "plan.txt"])
        # Selection: a folder and a file as one zip, then a bulk delete.
        open_page(d, base, "#/docs/")
        listed(d, ["old", "readme.txt"])
        d.find_element(By.CSS_SELECTOR, '#file-rows tr[data-folder="docs/old/"] td.pick input').click()
        d.find_element(By.CSS_SELECTOR, '#file-rows tr[data-key="docs/readme.txt"] td.pick input').click()
        report["selection_text"] = d.find_element(By.ID, "selection-count").text
        d.find_element(By.ID, "sel-download").click()
        target = os.path.join(d.downloads, "files.zip")
        wait(d, lambda d: os.path.exists(target) and zipfile.is_zipfile(target))
        with zipfile.ZipFile(target) as z:
            report["zip_names"] = sorted(z.namelist())
            report["zip_readme"] = z.read("readme.txt").decode()
        d.find_element(By.ID, "sel-delete").click()
        wait(d, EC.visibility_of_element_located((By.ID, "confirm")))
        report["delete_question"] = d.find_element(By.ID, "confirm-title").text
        d.find_element(By.ID, "confirm-yes").click()
        wait(d, lambda d: "readme.txt" not in row_names(d) and "old" not in row_names(d))
        report["after_delete"] = row_names(d)
    finally:
        d.quit()
    print(json.dumps(report), flush=True)


# ------------------------------------------------------------------ uploads


def stored_uploads(d):
    return d.execute_script("return JSON.stringify(Object.assign({}, localStorage))")


def throttle(d, up_bytes_per_s=-1, offline=False):
    d.execute_cdp_cmd("Network.enable", {})
    d.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": up_bytes_per_s})


def info_of(d, key):
    return d.execute_script(
        "const li = document.querySelector(`li[data-name=\"${arguments[0]}\"]`);"
        "return li ? li.querySelector('.info').textContent : null", key)


def tus_offset(base, url):
    req = urllib.request.Request(base + url, method="HEAD", headers={"Tus-Resumable": "1.0.0"})
    with urllib.request.urlopen(req) as r:
        return int(r.headers["Upload-Offset"])


class Steps:
    """Each check on its own: one that fails is recorded (null, and its
    error in "failed_steps") and the next ones still run."""

    def __init__(self, report):
        self.report = report
        report["failed_steps"] = {}

    def run(self, name, fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - recorded for the caller
            self.report["failed_steps"][name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def uploads(base, workdir):
    report = {}
    steps = Steps(report)
    d = driver(workdir)
    try:
        open_page(d, base)
        wait(d, lambda d: "No files yet" in d.find_element(By.TAG_NAME, "body").text)
        choose = lambda path: d.find_element(By.ID, "file-input").send_keys(path)  # noqa: E731
        li = lambda key: d.find_element(By.CSS_SELECTOR, f'li[data-name="{key}"]')  # noqa: E731
        done = lambda key, states=("done",), t=PATIENCE: wait(  # noqa: E731
            d, lambda d: d.find_elements(By.CSS_SELECTOR, f'li[data-name="{key}"]')
            and li(key).get_attribute("class") in states, t)

        def empty_file():
            # An empty file: a full bar, not an empty one at 100 %.
            choose(make(workdir, "empty.txt", b""))
            done("empty.txt")
            bar = li("empty.txt").find_element(By.TAG_NAME, "progress")
            report["empty_bar"] = [bar.get_attribute("value"), bar.get_attribute("max")]
            report["empty_pct"] = li("empty.txt").find_element(By.CSS_SELECTOR, ".pct").text
        steps.run("empty file", empty_file)

        slow = make(workdir, "film.mp4", os.urandom(3_000_000))
        report["film_md5"] = hashlib.md5(open(slow, "rb").read()).hexdigest()

        def running():
            # A slow upload: named as running, with the time left.
            throttle(d, 300 * 1024)
            choose(slow)
            wait(d, lambda d: "/s" in (info_of(d, "film.mp4") or ""))
            time.sleep(2)
            report["running_info"] = info_of(d, "film.mp4")
            pending = d.find_elements(By.ID, "pending")
            report["pending_shown_while_running"] = bool(pending) and pending[0].is_displayed()
            report["pending_text_while_running"] = pending[0].text if pending else ""
            shot(d, "uploading")
        steps.run("running", running)

        def paused():
            # Pause: nothing more is sent; resume: it finishes.
            li("film.mp4").find_element(By.XPATH, ".//button[text()='Pause']").click()
            done("film.mp4", ("paused",))
            saved = json.loads(json.loads(stored_uploads(d))["step-tus-uploads:"])
            url = next(e["url"] for e in saved.values() if e["name"] == "film.mp4")
            at1 = tus_offset(base, url)
            time.sleep(1.5)
            report["paused_offsets"] = [at1, tus_offset(base, url)]
            throttle(d)
            li("film.mp4").find_element(By.XPATH, ".//button[text()='Resume']").click()
        steps.run("pause and resume", paused)
        throttle(d)
        steps.run("film done", lambda: done("film.mp4"))

        def cancelled():
            # Cancel: gone from the page's memory and from the server.
            throttle(d, 100 * 1024)
            choose(make(workdir, "doomed.bin", os.urandom(2_000_000)))
            wait(d, lambda d: "doomed.bin" in stored_uploads(d))
            saved = json.loads(json.loads(stored_uploads(d))["step-tus-uploads:"])
            report["cancelled_url"] = next(e["url"] for e in saved.values() if e["name"] == "doomed.bin")
            li("doomed.bin").find_element(By.XPATH, ".//button[text()='Cancel']").click()
            done("doomed.bin", ("cancelled",))
            wait(d, lambda d: "doomed.bin" not in stored_uploads(d))
        steps.run("cancel", cancelled)
        throttle(d)

        def cleared():
            before = len(d.find_elements(By.CSS_SELECTOR, "li[data-name]"))
            d.find_element(By.ID, "uploads-clear").click()
            report["rows_before_after_clear"] = [before, len(d.find_elements(By.CSS_SELECTOR, "li[data-name]"))]
        steps.run("clear finished", cleared)

        def offline():
            # The browser goes offline: creation fails, is retried, then passes.
            throttle(d, offline=True)
            choose(make(workdir, "later.txt", b"sent once the network is back"))
            try:
                wait(d, lambda d: "Retrying" in (info_of(d, "later.txt") or ""), 10)
            finally:
                report["offline_info"] = info_of(d, "later.txt")
            throttle(d)
            done("later.txt", t=30)
            report["later_done"] = True
        steps.run("offline creation", offline)
        throttle(d)
    finally:
        d.quit()
    print(json.dumps(report), flush=True)


# ------------------------------------------------------------------ clash


def clash(base, workdir):
    put(base, "notes.txt", b"first")
    put(base, "a.txt", b"old a")
    put(base, "b.txt", b"old b")
    report = {}
    d = driver(workdir)
    try:
        open_page(d, base)
        listed(d, ["notes.txt"])
        second = make(os.path.join(workdir, "2"), "notes.txt", b"second")
        d.find_element(By.ID, "file-input").send_keys(second)
        asked = ("const c = document.getElementById('clash'); const li = document.querySelector("
                 "'li[data-name=\"notes.txt\"]'); return (c && c.open) || (li && li.className === 'failed')")
        wait(d, lambda d: d.execute_script(asked))
        if not d.find_elements(By.ID, "clash") or not d.find_element(By.ID, "clash").is_displayed():
            report["question"] = None
            report["instead"] = d.find_element(By.CSS_SELECTOR, 'li[data-name="notes.txt"] .info').text
            print(json.dumps(report), flush=True)
            return
        report["question"] = d.find_element(By.ID, "clash").text
        shot(d, "name-clash")
        click_dialog(d, "clash", "clash-rename")
        report["kept_as"] = wait_upload(d, "notes (1).txt").get_attribute("data-name")
        third = make(os.path.join(workdir, "3"), "notes.txt", b"third")
        d.find_element(By.ID, "file-input").send_keys(third)
        click_dialog(d, "clash", "clash-replace")
        wait(d, lambda d: [li.get_attribute("class") for li in d.find_elements(
            By.CSS_SELECTOR, '#upload-rows li[data-name="notes.txt"]')][:1] == ["done"])
        fourth = make(os.path.join(workdir, "4"), "notes.txt", b"fourth")
        d.find_element(By.ID, "file-input").send_keys(fourth)
        click_dialog(d, "clash", "clash-skip")
        wait(d, lambda d: [li.get_attribute("class") for li in d.find_elements(
            By.CSS_SELECTOR, '#upload-rows li[data-name="notes.txt"]')][:1] == ["skipped"])
        report["skipped_info"] = d.find_element(By.CSS_SELECTOR, '#upload-rows li[data-name="notes.txt"] .info').text
        # Two clashes, one answer for both.
        a = make(os.path.join(workdir, "5"), "a.txt", b"new a")
        b = make(os.path.join(workdir, "5"), "b.txt", b"new b")
        d.find_element(By.ID, "file-input").send_keys(a + "\n" + b)
        wait(d, EC.visibility_of_element_located((By.ID, "clash")))
        report["all_offered"] = d.find_element(By.ID, "clash-all-label").is_displayed()
        d.find_element(By.ID, "clash-all").click()
        click_dialog(d, "clash", "clash-rename")
        wait_upload(d, "a (1).txt")
        wait_upload(d, "b (1).txt")
        report["dialog_again"] = d.find_element(By.ID, "clash").is_displayed()
    finally:
        d.quit()
    print(json.dumps(report), flush=True)


# ------------------------------------------------------------------ phone


def phone(base, workdir):
    put(base, "a-very-long-file-name-that-goes-on-and-on-2024-final-version-two.txt", b"x" * 5000)
    put(base, "photos/2024/summer/beach.txt", b"sand")
    put(base, "short.txt", b"s")
    report = {}
    d = driver(workdir, PHONE)
    try:
        viewport(d, PHONE)
        open_page(d, base)
        listed(d, ["short.txt"])
        report["inner_width"] = d.execute_script("return innerWidth")
        report["scroll_width"] = d.execute_script("return document.documentElement.scrollWidth")
        report["buttons_off_screen"] = d.execute_script("""
            return [...document.querySelectorAll('button, input, select, a')]
              .filter(e => e.offsetParent !== null)
              .map(e => [e.id || e.getAttribute('aria-label') || e.textContent.trim(), e.getBoundingClientRect()])
              .filter(([, r]) => r.right > innerWidth + 0.5 || r.left < -0.5)
              .map(([n]) => n)""")
        report["long_name_box"] = d.execute_script("""
            const s = [...document.querySelectorAll('#file-rows td.name .open span, #file-rows td.key')]
              .find(e => e.textContent.startsWith('a-very-long'));
            const r = s.getBoundingClientRect();
            return {width: r.width, height: r.height,
                    line: parseFloat(getComputedStyle(s).lineHeight) || 22}""")
        report["font_px"] = d.execute_script(
            "return parseFloat(getComputedStyle(document.querySelector("
            "'#file-rows td.name .open span, #file-rows td.key')).fontSize)")
    finally:
        d.quit()
    print(json.dumps(report), flush=True)


# ------------------------------------------------------------------ a11y


def axe_run(d, where):
    from axe_selenium_python import Axe
    axe = Axe(d)
    axe.inject()
    results = axe.run()
    bad = [v for v in results["violations"] if v.get("impact") in ("serious", "critical")]
    return [{"where": where, "id": v["id"], "impact": v["impact"],
             "nodes": [n.get("target") for n in v["nodes"]][:5]} for v in bad]


def a11y(base, workdir):
    put(base, "docs/readme.txt", b"hello")
    put(base, "notes.txt", b"notes")
    put(base, "pics/otter.png", png(64, 64, (200, 120, 60)))
    report = {"violations": [], "checked": []}
    d = driver(workdir)
    try:
        for scheme in ("light", "dark"):
            d.execute_cdp_cmd("Emulation.setEmulatedMedia", {
                "features": [{"name": "prefers-color-scheme", "value": scheme}]})
            open_page(d, base)
            listed(d, ["notes.txt"])
            time.sleep(0.5)
            report["violations"] += axe_run(d, f"files ({scheme})")
            try:
                d.find_element(By.CSS_SELECTOR, '#file-rows tr[data-key="notes.txt"] td.pick input').click()
                report["violations"] += axe_run(d, f"selection ({scheme})")
                d.find_element(By.CSS_SELECTOR, '#file-rows tr[data-key="notes.txt"] .open').click()
                wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#preview-body pre"))
                report["violations"] += axe_run(d, f"preview ({scheme})")
                d.find_element(By.ID, "preview-close").click()
                d.find_element(By.ID, "file-input").send_keys(make(workdir, "notes.txt", b"again"))
                wait(d, EC.visibility_of_element_located((By.ID, "clash")))
                report["violations"] += axe_run(d, f"name clash ({scheme})")
                click_dialog(d, "clash", "clash-skip")
                report["violations"] += axe_run(d, f"uploads ({scheme})")
                d.find_element(By.ID, "show-login").click()
                wait(d, EC.visibility_of_element_located((By.ID, "login")))
                report["violations"] += axe_run(d, f"sign-in ({scheme})")
                report["checked"].append(scheme)
            except Exception as e:  # noqa: BLE001 - recorded for the caller
                report.setdefault("failed_steps", {})[scheme] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        report["axe_version"] = d.execute_script("return axe.version")
    finally:
        d.quit()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    mode, base, workdir = sys.argv[1], sys.argv[2].rstrip("/"), sys.argv[3]
    {"signin": signin, "browse": browse, "uploads": uploads, "clash": clash,
     "phone": phone, "a11y": a11y}[mode](base, workdir)
