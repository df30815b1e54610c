"""The web UI in a real headless Chromium against a real `faceprint serve` on loopback.

Enrol a person from a shared photo, identify another photo of the same person, and see the name.
Needs Debian's Chromium (`apt-get install -y chromium`) and Playwright for Python; the test FAILS, with the
install command, when Chromium is missing (a silent skip would hide a UI that no longer works).
Set FACEPRINT_UI_SCREENSHOTS=DIR to keep the screenshots.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import DATA, IDENTITIES

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
INSTALL_HINT = "install it with: apt-get update && apt-get install -y chromium  (and pip install playwright)"
ENROL = [IDENTITIES / "person01" / "img27.jpg", IDENTITIES / "person01" / "img28.jpg"]
PROBE = IDENTITIES / "person01" / "img43.jpg"
NUAA_LIVE = sorted((DATA / "spoof" / "nuaa" / "live" / "0001").iterdir())[0]
NUAA_PRINT = sorted((DATA / "spoof" / "nuaa" / "print" / "0001").iterdir())[0]


def chromium_path() -> str:
    found = os.environ.get("FACEPRINT_CHROMIUM") or next((p for p in CHROMIUM_CANDIDATES if Path(p).exists()), None)
    if not found:
        pytest.fail(f"Chromium not found at {', '.join(CHROMIUM_CANDIDATES)}: {INSTALL_HINT}", pytrace=False)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, faceplugin_store: Path
) -> Iterator[tuple[str, str]]:
    """A real `faceprint serve` subprocess (with the faceplugin pack's liveness model installed); yields its
    URL and an admin key made with `faceprint keys create`."""
    home = tmp_path_factory.mktemp("ui-home")
    env = {
        **os.environ,
        "FACEPRINT_HOME": str(home),
        "FACEPRINT_KEY": secrets.token_hex(32),
        "FACEPRINT_DETECTOR": "hog",
        "FACEPRINT_CACHE_DIR": str(cache_dir),
        "FACEPRINT_MODEL_DIR": str(faceplugin_store),
    }
    cli = [sys.executable, "-c", "from faceprint.cli import app; app()"]
    made = subprocess.run(
        [*cli, "keys", "create", "--scope", "admin", "--name", "ui-test"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = made.stdout.strip()
    port = free_port()
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [*cli, "serve", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, url, home / "server.log", 120)
        yield url, key
    finally:
        stop_server(proc)
        log.close()


def wait_until_ready(proc: subprocess.Popen, url: str, log_path: Path, seconds: float) -> None:
    """Poll ``/readyz`` of a `faceprint serve` subprocess; fail with its log if it exits or is not ready."""
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            pytest.fail(f"faceprint serve exited early:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"server not ready in {seconds:.0f} s:\n{log_path.read_text()}")
        time.sleep(0.25)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"Playwright for Python is not installed: pip install playwright; Chromium: {INSTALL_HINT}")
    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def open_ui(browser, url: str, key: str, *, height: int = 1000) -> tuple[Any, list[str]]:
    """A new page of the web UI at ``url`` with ``key`` saved, and the list its page and console errors go to."""
    page = browser.new_page(viewport={"width": 1100, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(url + "/")
    page.fill("#api-key", key)
    page.click("#key-save")
    # A locator wait, not wait_for_function: polling a JS string is eval, which the UI's CSP rightly forbids.
    page.locator("#status", has_text="key set").wait_for(timeout=30_000)
    return page, errors


def test_enrol_then_identify_shows_the_name(server: tuple[str, str], browser, tmp_path: Path) -> None:
    url, key = server
    page, errors = open_ui(browser, url, key)
    # The header names every model the server has loaded, with its detector.
    assert "dlib-resnet-v1 (hog)" in page.inner_text("#status")

    # enrol from two shared photos
    page.click("nav button[data-tab=enrol]")
    page.fill("#enrol-name", "Ada Lovelace")
    page.fill("#enrol-consent-by", "Ada Lovelace")
    page.set_input_files("#enrol-files", [str(p) for p in ENROL])
    page.click("#enrol-run")
    page.wait_for_selector("#enrol-result li.match", timeout=60_000)
    assert "2 photo(s) enrolled" in page.inner_text("#enrol-result")

    # identify another photo of the same person: the name appears in the list (and on the canvas)
    page.click("nav button[data-tab=identify]")
    page.set_input_files("#identify-file", str(PROBE))
    page.fill("#identify-threshold", "0.92")  # the shipped calibration may not exist yet
    page.click("#identify-run")
    page.wait_for_selector("#identify-results[data-done='1'] .match", timeout=60_000)
    assert page.inner_text("#identify-results .match") == "Ada Lovelace"
    assert page.eval_on_selector("#identify-canvas", "c => c.width") > 0
    shots = Path(os.environ.get("FACEPRINT_UI_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "identify.png"), full_page=True)

    # the subject list and the audit log show what happened
    page.click("nav button[data-tab=subjects]")
    page.wait_for_selector("#subjects-body tr")
    assert "Ada Lovelace" in page.inner_text("#subjects-body")
    page.click("nav button[data-tab=audit]")
    page.wait_for_selector("#audit-body tr")
    audit_text = page.inner_text("#audit-body")
    assert "identify" in audit_text and "enrol" in audit_text
    page.screenshot(path=str(shots / "audit.png"), full_page=True)
    assert page.inner_text("#error") == ""
    assert not errors, errors
    page.close()


def test_liveness_tab_labels_live_and_attack_faces(server: tuple[str, str], browser) -> None:
    """The Liveness tab boxes each face of a real NUAA frame with its decision: live, or ATTACK."""
    url, key = server
    page, errors = open_ui(browser, url, key)
    page.click("nav button[data-tab=liveness]")
    for frame, css, word in ((NUAA_LIVE, "match", "live"), (NUAA_PRINT, "unknown", "ATTACK")):
        page.set_input_files("#liveness-file", str(frame))
        page.click("#liveness-run")
        page.wait_for_selector(f"#liveness-results[data-done='1'] .{css}", timeout=60_000)
        assert page.inner_text(f"#liveness-results .{css}").startswith(word + " ")
        assert page.eval_on_selector("#liveness-canvas", "c => c.width") > 0
    assert page.inner_text("#error") == ""
    assert not errors, errors
    page.close()


def test_clusters_tab_groups_faces_and_merges(server: tuple[str, str], browser, tmp_path: Path) -> None:
    """The Clusters tab: photos of two people become two thumbnail grids; merging them leaves one."""
    url, key = server
    page, errors = open_ui(browser, url, key)
    page.click("nav button[data-tab=clusters]")
    photos = [IDENTITIES / "person01" / n for n in ("img27.jpg", "img28.jpg", "img43.jpg")]
    photos += [IDENTITIES / "person02" / n for n in ("img47.jpg", "img48.jpg")]
    page.set_input_files("#clusters-files", [str(p) for p in photos])
    page.click("#clusters-run")
    page.locator("#clusters-summary", has_text="2 cluster(s)").wait_for(timeout=120_000)
    clusters = page.locator("#clusters-list .cluster h3", has_text="Cluster")
    assert clusters.count() == 2
    assert page.locator("#clusters-list .cluster").first.locator("img").count() == 3  # largest first
    page.screenshot(path=str(tmp_path / "clusters.png"))
    clusters.nth(0).click()
    clusters.nth(1).click()
    page.click("#clusters-merge")
    page.locator("#clusters-summary", has_text="1 cluster(s)").wait_for(timeout=60_000)
    assert page.locator("#clusters-list .cluster").first.locator("img").count() == 5
    assert page.inner_text("#error") == ""
    assert not errors, errors
    page.close()


def test_missing_chromium_fails_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard itself: without Chromium the UI test must fail loudly, naming the apt command."""
    monkeypatch.setenv("FACEPRINT_CHROMIUM", "")
    monkeypatch.setattr("tests.test_service_ui.CHROMIUM_CANDIDATES", ("/nonexistent/chromium",))
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        chromium_path()


def test_chromium_binary_is_usable() -> None:
    path = chromium_path()
    assert shutil.which(path) or Path(path).exists()
