"""The gateway's page in headless Chromium, driven by selenium (run by
gateway/tests/browser.rs).

    browser.py BASE WORKDIR [auth]

1. opens BASE/, chooses two files at once in the file input, waits until
   both progress bars complete and (when the gateway can list) both keys
   appear in the listing;
2. resume after a page reload: half of a third file is uploaded over tus
   beforehand and its upload URL is in the page's localStorage, as an
   interrupted upload leaves it; the page is reloaded, says so, the file is
   chosen again, and the page must continue from the server's offset;
3. deletes a file with its Delete button (confirming in the page's dialog);
4. with STEP_SCREENSHOT=path set, saves a PNG of the page on the way.

With `auth` (a gateway that requires a token): the page must show its
sign-in form, sign in as alice (STEP's default password), then upload a
file and list it.

Prints one JSON line: {"uploaded": [keys], "deleted": key, "listed": bool,
"resumed_from": n}; the caller checks the bytes over HTTP.
"""

import base64
import json
import os
import shutil
import sys
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

PATIENCE = 60


def pattern(n, seed):
    x = (0x9E3779B9 ^ seed) & 0xFFFFFFFF
    out = bytearray(n)
    for i in range(n):
        x = (x * 1664525 + 1013904223) & 0xFFFFFFFF
        out[i] = x >> 24
    return bytes(out)


def make(workdir, name, size, seed):
    path = os.path.join(workdir, name)
    with open(path, "wb") as f:
        f.write(pattern(size, seed))
    # Whole seconds, so the page's File.lastModified (ms) is known exactly.
    os.utime(path, (1_700_000_000, 1_700_000_000))
    return path


def driver():
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
              "--window-size=1100,900", "--disable-gpu"):
        opts.add_argument(a)
    # The Debian chromedriver, named explicitly: selenium must not try to
    # download a driver.
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(options=opts, service=service)


def can_list(base):
    try:
        with urllib.request.urlopen(base + "/files?limit=1", timeout=10) as r:
            return r.status == 200
    except Exception:
        return False


def wait_done(d, name):
    sel = f'#uploads li[data-name="{name}"]'
    WebDriverWait(d, PATIENCE).until(
        lambda d: d.find_element(By.CSS_SELECTOR, sel).get_attribute("class") in ("done", "failed")
    )
    li = d.find_element(By.CSS_SELECTOR, sel)
    info = li.find_element(By.CSS_SELECTOR, ".info").text
    assert li.get_attribute("class") == "done", f"{name}: {info}"
    bar = li.find_element(By.TAG_NAME, "progress")
    assert bar.get_attribute("value") == bar.get_attribute("max"), f"{name}: bar not full"
    assert li.find_element(By.CSS_SELECTOR, ".pct").text == "100 %"
    return li


def wait_listed(d, key):
    WebDriverWait(d, PATIENCE).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, f'#file-rows tr[data-key="{key}"]'))
    )


def tus_half(base, path, name):
    """Start a tus upload of path and send a little over half of it."""
    data = open(path, "rb").read()
    meta = "filename " + base64.b64encode(name.encode()).decode()
    req = urllib.request.Request(base + "/tus/", method="POST", headers={
        "Tus-Resumable": "1.0.0", "Upload-Length": str(len(data)), "Upload-Metadata": meta})
    with urllib.request.urlopen(req, timeout=10) as r:
        url = r.headers["Location"]
    half = len(data) // 2 + 123
    req = urllib.request.Request(base + url, method="PATCH", data=data[:half], headers={
        "Tus-Resumable": "1.0.0", "Upload-Offset": "0",
        "Content-Type": "application/offset+octet-stream"})
    with urllib.request.urlopen(req, timeout=30) as r:
        offset = int(r.headers["Upload-Offset"])
    return url, offset


def signed_in(base, workdir):
    path = make(workdir, "alice.bin", 700_001, 4)
    d = driver()
    try:
        d.get(base + "/")
        # The listing answered 401: the page asks for a sign-in, in words.
        WebDriverWait(d, PATIENCE).until(EC.visibility_of_element_located((By.ID, "login")))
        d.find_element(By.ID, "username").send_keys("alice")
        d.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
        WebDriverWait(d, PATIENCE).until(EC.invisibility_of_element_located((By.ID, "login")))
        assert "alice" in d.find_element(By.ID, "who-name").text
        d.find_element(By.ID, "file-input").send_keys(path)
        wait_done(d, "alice.bin")
        wait_listed(d, "alice.bin")
        print(json.dumps({"uploaded": ["alice.bin"], "user": "alice"}), flush=True)
    finally:
        d.quit()


def main(base, workdir):
    shot = os.environ.get("STEP_SCREENSHOT")
    listing = can_list(base)
    files = [make(workdir, "otter.jpg", 1_500_000, 1), make(workdir, "notes.txt", 300_123, 2)]
    d = driver()
    try:
        d.get(base + "/")
        WebDriverWait(d, PATIENCE).until(EC.presence_of_element_located((By.ID, "file-input")))
        # Several files at once, through the file picker's input.
        d.find_element(By.ID, "file-input").send_keys("\n".join(files))
        for f in files:
            wait_done(d, os.path.basename(f))
            if listing:
                wait_listed(d, os.path.basename(f))
        if shot:
            d.save_screenshot(shot)

        # Resume across a page reload.
        third = make(workdir, "big video.mp4", 2_000_000, 3)
        url, offset = tus_half(base, third, "big video.mp4")
        # The page keeps them per user ("" is the anonymous one), by key
        # and size.
        d.execute_script(
            "localStorage.setItem('step-tus-uploads:', JSON.stringify(arguments[0]))",
            {"big video.mp4|2000000": {"url": url, "key": "big video.mp4",
                                       "name": "big video.mp4", "size": 2_000_000}},
        )
        d.refresh()
        WebDriverWait(d, PATIENCE).until(EC.visibility_of_element_located((By.ID, "pending")))
        assert "big video.mp4" in d.find_element(By.ID, "pending").text
        d.find_element(By.ID, "file-input").send_keys(third)
        li = wait_done(d, "big video.mp4")
        resumed_from = int(li.get_attribute("data-resumed-from") or -1)
        assert resumed_from == offset, f"resumed from {resumed_from}, server had {offset}"
        assert d.execute_script("return localStorage.getItem('step-tus-uploads:')") is None
        if listing:
            wait_listed(d, "big video.mp4")
            for f in files:
                wait_listed(d, os.path.basename(f))

        deleted = None
        if listing:
            deleted = "notes.txt"
            row = d.find_element(By.CSS_SELECTOR, f'#file-rows tr[data-key="{deleted}"]')
            row.find_element(By.CSS_SELECTOR, "button.danger").click()
            # The page asks in its own dialog.
            WebDriverWait(d, PATIENCE).until(EC.visibility_of_element_located((By.ID, "confirm")))
            d.find_element(By.ID, "confirm-yes").click()
            WebDriverWait(d, PATIENCE).until(lambda d: not d.find_elements(
                By.CSS_SELECTOR, f'#file-rows tr[data-key="{deleted}"]'))
        print(json.dumps({
            "uploaded": [os.path.basename(f) for f in files] + ["big video.mp4"],
            "deleted": deleted,
            "listed": listing,
            "resumed_from": resumed_from,
        }), flush=True)
    finally:
        d.quit()


if __name__ == "__main__":
    if sys.argv[3:] == ["auth"]:
        signed_in(sys.argv[1].rstrip("/"), sys.argv[2])
    else:
        main(sys.argv[1].rstrip("/"), sys.argv[2])
