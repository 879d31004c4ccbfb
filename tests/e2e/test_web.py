"""The web app in a real headless Chromium (Debian's) against a real server process.

Screenshots of the main pages go to $CHEXRAY_SCREENSHOT_DIR when set (the README shows
the set in docs/screenshots), else to a temporary folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.support.api import PASSWORD, post_image, xray
from tests.support.server_process import running_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Chromium is not installed (scripts/ensure-test-deps.sh)"
)
PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 860}


@pytest.fixture(scope="module")
def base(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    with running_server(tiny_repo, tmp_path_factory.mktemp("web")) as (url, _):
        yield url


@pytest.fixture(scope="module")
def strict_base(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server that analyses for signed-in callers only (CHEXRAY_REQUIRE_AUTH)."""
    root = tmp_path_factory.mktemp("web-strict")
    with running_server(tiny_repo, root, CHEXRAY_REQUIRE_AUTH="true") as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("CHEXRAY_SCREENSHOT_DIR")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("files")
    chest = d / "chest.png"
    chest.write_bytes(xray(seed=3, size=(600, 520)))
    text = d / "notes.png"
    text.write_bytes(b"These are my notes, not an X-ray.\n")
    return {"chest": chest, "text": text}


@pytest.fixture
def new_page(browser, base: str):
    """Pages in a fresh browser context (no cookies), closed after the test."""
    contexts = []

    def make(viewport=DESKTOP, url: str | None = None):
        context = browser.new_context(viewport=viewport, base_url=url or base)
        contexts.append(context)
        return _page(context)

    yield make
    for c in contexts:
        c.close()


def _page(context):
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # Script errors only: a 4xx the page shows as a message is not an error of the page.
    page.on(
        "console",
        lambda m: (
            m.type == "error" and "Failed to load resource" not in m.text and errors.append(m.text)
        ),
    )
    page.errors = errors
    return page


def ready(page, hash_: str) -> None:
    page.goto(f"/{hash_}")
    page.wait_for_selector("body[data-ready=true]")


def analyse(page, path: Path, title: str = "") -> None:
    ready(page, "#/analyse")
    page.set_input_files("#file", str(path))
    page.fill("#title", title)
    page.click("#analyse")


def heat_pixels(page) -> int:
    """How many pixels of the heatmap canvas carry colour (alpha > 0)."""
    return page.eval_on_selector(
        "canvas.heat",
        """c => {
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
            return n;
        }""",
    )


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_home_says_what_it_is_and_that_models_are_untrained(new_page, shots) -> None:
    page = new_page()
    ready(page, "#/")
    assert page.is_visible("#untrained")
    text = page.inner_text("main")
    for finding in ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"):
        assert finding in text
    assert "not a medical device" in text
    page.screenshot(path=str(shots / "home.png"))
    assert page.errors == []


def test_anonymous_analysis_shows_five_findings_and_a_heatmap(new_page, files, shots) -> None:
    page = new_page()
    analyse(page, files["chest"])
    page.wait_for_selector("#result")
    assert page.locator("ul.findings li").count() == 5
    assert page.locator("ul.findings .threshold").count() == 5
    page.wait_for_function("document.querySelector('canvas.heat').width > 0")
    assert heat_pixels(page) > 0
    # One finding's map, then the opacity slider, then the download.
    page.select_option("#heat-finding", "Edema")
    assert "Edema" in page.get_attribute("canvas.heat", "aria-label")
    page.fill("#heat-opacity", "30")
    assert page.eval_on_selector("canvas.heat", "c => getComputedStyle(c).opacity") == "0.3"
    with page.expect_download() as download:
        page.click("text=Download heatmap PNG")
    assert download.value.suggested_filename == "chexray-heatmap-edema.png"
    assert "will not be stored" in page.inner_text("main")
    page.fill("#heat-opacity", "60")
    page.screenshot(path=str(shots / "analyse.png"), full_page=True)
    assert page.errors == []


def test_a_text_file_named_png_shows_a_readable_error(new_page, files) -> None:
    page = new_page()
    analyse(page, files["text"])
    error = page.wait_for_selector("[role=alert]:not([hidden])")
    assert "not a PNG, JPEG or DICOM image" in error.inner_text()
    assert "{" not in error.inner_text()  # a sentence, not a JSON dump
    assert page.locator("#result").count() == 0


def test_account_flow(new_page, files, shots) -> None:
    page = new_page()
    page.on("dialog", lambda d: d.accept())
    ready(page, "#/register")
    page.fill("#username", "alice")
    page.fill("#email", "alice@example.org")
    page.fill("#password", "short")
    page.fill("#password2", "short")
    page.evaluate("document.querySelector('form').noValidate = true")  # let the API judge
    page.click("text=Create account")
    assert (
        "at least 10 characters"
        in page.wait_for_selector("#password-error:has-text('10')").inner_text()
    )
    page.fill("#password", PASSWORD)
    page.fill("#password2", PASSWORD)
    page.click("text=Create account")
    page.wait_for_url("**/#/analyse")
    assert page.is_visible("text=Log out")

    analyse(page, files["chest"], "Follow-up, week 2")
    page.wait_for_selector("#analysis a[href^='#/study/']:has-text('Saved to your history')")

    ready(page, "#/history")
    page.wait_for_selector("li.study")
    assert page.locator("li.study").count() == 1
    assert "Follow-up, week 2" in page.inner_text("li.study")
    page.screenshot(path=str(shots / "history.png"))
    page.click("li.study a.title")
    page.wait_for_selector("#result")
    page.wait_for_function("document.querySelector('canvas.heat').width > 0")
    assert page.locator("ul.findings li").count() == 5
    page.screenshot(path=str(shots / "study.png"), full_page=True)

    ready(page, "#/profile")
    page.wait_for_selector("dl.profile")
    assert "alice@example.org" in page.inner_text("dl.profile")
    page.screenshot(path=str(shots / "profile.png"))

    ready(page, "#/history")
    page.click("li.study a.title")
    page.click("text=Delete study")
    page.wait_for_url("**/#/history")
    page.wait_for_selector("#empty")
    page.click("text=Log out")
    page.wait_for_selector("nav >> text=Log in")
    assert not page.is_visible("text=Log out")
    assert page.errors == []


def test_wrong_password_and_login_page(new_page, shots) -> None:
    page = new_page()
    ready(page, "#/login")
    page.fill("#username", "nobody")
    page.fill("#password", "not the password")
    page.click("button:has-text('Log in')")
    assert (
        "Wrong username or password"
        in page.wait_for_selector("[role=alert]:not([hidden])").inner_text()
    )
    page.screenshot(path=str(shots / "login.png"))


def test_phone_sized_screen_has_no_horizontal_scrolling(new_page, files, shots) -> None:
    page = new_page(PHONE)
    for hash_ in ("#/", "#/login", "#/register", "#/analyse"):
        ready(page, hash_)
        assert no_horizontal_scroll(page), hash_
    analyse(page, files["chest"])
    page.wait_for_selector("#result")
    page.wait_for_function("document.querySelector('canvas.heat').width > 0")
    assert no_horizontal_scroll(page)
    page.screenshot(path=str(shots / "phone.png"), full_page=True)


def test_keyboard_reaches_the_file_chooser(new_page) -> None:
    page = new_page()
    ready(page, "#/analyse")
    # Enter and Space on the drop zone open the file chooser (seen as a click on the input).
    page.evaluate("""() => { window.opened = 0; document.querySelector('#file')
        .addEventListener('click', e => { window.opened++; e.preventDefault(); }); }""")
    page.press(".drop", "Enter")
    page.press(".drop", " ")
    assert page.evaluate("window.opened") == 2
    assert page.get_attribute(".drop", "aria-label") == "Choose or drop an X-ray file"
    for img in page.query_selector_all("img"):
        assert img.get_attribute("alt")


def register_in_page(page, username: str) -> None:
    ready(page, "#/register")
    page.fill("#username", username)
    page.fill("#email", f"{username}@example.org")
    page.fill("#password", PASSWORD)
    page.fill("#password2", PASSWORD)
    page.click("text=Create account")
    page.wait_for_url("**/#/analyse")


def test_api_keys_are_made_shown_once_and_revoked_on_the_profile(new_page, base) -> None:
    page = new_page()
    page.on("dialog", lambda d: d.accept())
    register_in_page(page, "keyholder")
    ready(page, "#/profile")
    page.wait_for_selector("#keys li:has-text('No API keys yet')")
    page.fill("#key_name", "nightly batch")
    page.click("text=Create key")
    key = page.wait_for_selector("#new-key-value").inner_text().strip()
    assert key.startswith("chx_") and len(key) == 47
    page.wait_for_selector("li.key:has-text('nightly batch')")
    item = page.inner_text("li.key")
    assert key[:10] in item and key not in item and "never used" in item

    # The key analyses through the API; the list then says it was used.
    with httpx.Client(base_url=base, timeout=30) as h:
        r = post_image(h, xray(seed=5), headers={"X-API-Key": key})
        assert r.status_code == 200, r.text
        page.reload()
        page.wait_for_selector("li.key:has-text('last used')")
        assert page.locator("#new-key-value").count() == 0  # shown once, never again
        page.click("li.key button:has-text('Revoke')")
        page.wait_for_selector("#keys li:has-text('No API keys yet')")
        r = post_image(h, xray(seed=5), headers={"X-API-Key": key})
        assert r.status_code == 401 and r.json()["code"] == "invalid_api_key"
    assert page.errors == []


def test_with_require_auth_the_app_asks_to_sign_in(new_page, strict_base, files) -> None:
    page = new_page(url=strict_base)
    ready(page, "#/")
    assert "signed-in users only" in page.inner_text("main")
    page.click("text=Analyse an X-ray")
    notice = page.wait_for_selector("#sign-in-required")
    assert "signed-in users only" in notice.inner_text()
    assert page.locator("#file").count() == 0 and page.is_visible("#password")
    with httpx.Client(base_url=strict_base, timeout=30) as h:
        r = post_image(h, xray(seed=6))
        assert r.status_code == 401 and r.json()["code"] == "not_authenticated"
        body = {"username": "carol", "email": "carol@example.org"}
        r = h.post(
            "/api/v1/auth/register", json={**body, "password": PASSWORD, "password2": PASSWORD}
        )
        assert r.status_code == 201, r.text
    # Signing in on that page leads straight to the analysis, which is then kept.
    page.fill("#username", "carol")
    page.fill("#password", PASSWORD)
    page.click("button:has-text('Log in')")
    page.wait_for_selector("#file", state="attached")
    assert "will be saved to your history" in page.inner_text("main")
    page.set_input_files("#file", str(files["chest"]))
    page.click("#analyse")
    page.wait_for_selector("#analysis a[href^='#/study/']:has-text('Saved to your history')")
    page.click("text=Log out")
    page.wait_for_selector("nav >> text=Log in")
    ready(page, "#/analyse")
    page.wait_for_selector("#sign-in-required")
    assert page.errors == []


def test_a_dicom_study_offers_its_results_as_dicom(new_page, tmp_path: Path, shots) -> None:
    import pydicom

    from tests.support.dicom_studies import chest_instance

    source = tmp_path / "chest.dcm"
    source.write_bytes(chest_instance(seed=4))
    page = new_page()
    register_in_page(page, "dora")
    analyse(page, source, "CR from the PACS")
    page.click("#analysis a[href^='#/study/']")
    # The analysis page shows the same section: wait for the study page's own button first,
    # or the section found may be the one the route change is about to remove.
    page.wait_for_selector("button:has-text('Delete study')")
    section = page.wait_for_selector("section.dicom")
    assert "Modality CR · BodyPartExamined CHEST · ViewPosition PA" in section.inner_text()
    assert page.locator("section.dicom a").count() == 6  # the report and five heatmaps
    with page.expect_download() as download:
        page.click("text=Structured Report (DICOM SR)")
    sr = pydicom.dcmread(download.value.path())
    assert sr.StudyInstanceUID == pydicom.dcmread(source).StudyInstanceUID
    assert sr.Modality == "SR"
    page.screenshot(path=str(shots / "study-dicom.png"), full_page=True)
    assert page.errors == []
