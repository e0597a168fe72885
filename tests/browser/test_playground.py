"""The playground page in a real headless Chromium (Debian's, driven by Playwright) against a real server.

Screenshots land in ``$QIS_TEST_ARTIFACTS/playground`` (default ``test-artifacts/``) for a person to look at.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, JSHandle, Page, expect, sync_playwright

from tests.conftest import RunningServer, free_socket, png_bytes, serving

ARTIFACTS = Path(os.environ.get("QIS_TEST_ARTIFACTS", "test-artifacts")) / "playground"
EDIT_MODEL = "qwen-image-edit-plus"
# The demo preset runs 2 steps; 40 keep a text-to-image task running long enough to watch its progress.
SLOW_MODEL_CONFIG = '[models."qwen-image-2.0"]\nsteps = 40\n'


@pytest.fixture(scope="module")
def page_server(tmp_path_factory: pytest.TempPathFactory, demo_models_dir: Path) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("playground-data")
    config = data_dir / "models.toml"
    config.write_text(SLOW_MODEL_CONFIG)
    with serving(data_dir, demo_models_dir, free_socket(), models_config=config,
                 enabled_models=["qwen-image-2.0", EDIT_MODEL], rate_limits_enabled=False) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = os.environ.get("QIS_CHROMIUM") or shutil.which("chromium")
    if chromium is None:
        pytest.fail("Chromium is missing: run scripts/install-browser (the README's test command does).")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, page_server: RunningServer) -> Iterator[Page]:
    context = browser.new_context(base_url=page_server.url, accept_downloads=True)
    opened = context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    opened.on("console", lambda message: _note_console_error(message, problems))
    opened.set_default_timeout(30_000)
    yield opened
    context.close()
    assert problems == [], problems


def _note_console_error(message: ConsoleMessage, problems: list[str]) -> None:
    # A rejected request logs "Failed to load resource"; the page shows those itself, so only script errors count.
    if message.type == "error" and "Failed to load resource" not in message.text:
        problems.append(f"console error: {message.text}")


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def open_with_key(page: Page, key: str) -> None:
    page.goto("/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Save key").click()
    expect(page.get_by_label("Model")).to_contain_text(EDIT_MODEL)


def holding_file(page: Page, name: str, data: bytes) -> JSHandle:
    """A DataTransfer in the page holding one PNG file, as a drag from the desktop or a clipboard carries."""
    return page.evaluate_handle(
        """([name, bytes]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name, {type: "image/png"}));
            return transfer;
        }""", [name, list(data)])


def drop_image(page: Page, name: str, data: bytes) -> None:
    """A real drop event carrying a file."""
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": holding_file(page, name, data)})


def paste_image(page: Page, name: str, data: bytes) -> None:
    """A real paste event whose clipboard holds an image file, as pasting a screenshot produces."""
    page.evaluate("""clipboard => document.dispatchEvent(
        new ClipboardEvent("paste", {clipboardData: clipboard, bubbles: true}))""", holding_file(page, name, data))


def test_page_is_served_with_a_strict_policy(page_server: RunningServer) -> None:
    response = httpx.get(f"{page_server.url}/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    script = httpx.get(f"{page_server.url}/playground/playground.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert httpx.get(f"{page_server.url}/playground/index.html").status_code == 404


def test_every_control_has_a_label(page: Page, page_server: RunningServer) -> None:
    open_with_key(page, page_server.key)
    unlabelled = page.evaluate("""() => [...document.querySelectorAll("input, select, textarea")]
        .filter((control) => control.labels.length === 0 && !control.getAttribute("aria-label"))
        .map((control) => control.id)""")
    assert unlabelled == []


def test_key_is_kept_in_the_browser(page: Page, page_server: RunningServer) -> None:
    open_with_key(page, page_server.key)
    page.reload()
    expect(page.get_by_label("API key")).to_have_value(page_server.key)
    expect(page.get_by_label("Model")).to_contain_text("qwen-image-2.0")
    page.get_by_role("button", name="Forget").click()
    page.reload()
    expect(page.get_by_label("API key")).to_have_value("")


def test_a_wrong_key_shows_the_api_error(page: Page) -> None:
    page.goto("/")
    expect(page.get_by_role("status").first).to_contain_text("Paste the key")
    page.get_by_label("API key").fill("sk-not-a-key")
    page.get_by_role("button", name="Save key").click()
    expect(page.get_by_role("alert")).to_contain_text("InvalidApiKey")
    screenshot(page, "wrong-key")


def test_an_edit_without_images_shows_the_api_message(page: Page, page_server: RunningServer) -> None:
    open_with_key(page, page_server.key)
    page.get_by_label("Model").select_option(EDIT_MODEL)
    page.get_by_label("Instruction").fill("make it blue")
    page.get_by_role("button", name="Run", exact=True).click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("InvalidParameter")
    expect(alert).to_contain_text("accepts 1 to 3 image(s); got 0")
    expect(alert).to_contain_text("request ")
    screenshot(page, "api-error")


def test_generate_shows_progress_then_results_and_recent_tasks(page: Page, page_server: RunningServer) -> None:
    open_with_key(page, page_server.key)
    page.get_by_label("Model").select_option("qwen-image-2.0")
    page.get_by_label("Instruction").fill("a lighthouse at dusk")
    page.get_by_label("Size (W*H)").fill("512*512")
    page.get_by_label("Images (n)").fill("2")
    page.get_by_label("Seed").fill("7")
    page.get_by_role("button", name="Run", exact=True).click()

    label = page.locator("#progress-label")
    expect(label).to_have_text(re.compile(r"Step \d+ of 40 · about \S+ s left"))
    assert 0 < page.locator("#progress").evaluate("bar => bar.value") <= 40
    screenshot(page, "progress")

    gallery = page.get_by_role("img", name=re.compile(r"Result \d of 2"))
    expect(gallery).to_have_count(2, timeout=120_000)
    for index in range(2):
        expect(gallery.nth(index)).to_have_js_property("naturalWidth", 512)
    expect(page.locator("#progress-section")).to_be_hidden()
    expect(page.locator("#results-meta")).to_contain_text("512*512")
    screenshot(page, "generated")

    rows = page.locator("#tasks tbody tr")
    expect(rows.first).to_contain_text("SUCCEEDED")
    expect(rows.first).to_contain_text("qwen-image-2.0")
    page.reload()  # a fresh page finds the task in the recent list and reopens its results
    page.locator("#tasks tbody tr").first.get_by_role("button").click()
    expect(page.get_by_role("img", name=re.compile(r"Result \d of 2"))).to_have_count(2)


def test_edit_with_picked_and_dropped_images_then_keep_editing(page: Page, page_server: RunningServer,
                                                                tmp_path: Path) -> None:
    picked = tmp_path / "picked.png"
    picked.write_bytes(png_bytes((480, 384), (30, 120, 200)))
    open_with_key(page, page_server.key)
    page.get_by_label("Model").select_option(EDIT_MODEL)
    page.get_by_label("Choose images").set_input_files(picked)
    drop_image(page, "dropped.png", png_bytes((384, 384), (220, 200, 40)))
    expect(page.get_by_role("img", name=re.compile("^Input"))).to_have_count(2)
    expect(page.locator("#inputs-count")).to_have_text("(2 of 3)")
    page.get_by_label("Instruction").fill("put the yellow square on the blue one")
    page.get_by_role("button", name="Run", exact=True).click()

    result = page.get_by_role("img", name="Result 1 of 1")
    expect(result).to_be_visible(timeout=120_000)
    expect(page.locator("#compare")).to_be_visible()
    page.get_by_label("Before / after").fill("80")
    expect(page.locator("#compare-after")).to_have_css("clip-path", "inset(0px 0px 0px 80%)")
    screenshot(page, "edited")

    with page.expect_download() as download:
        page.get_by_role("link", name="Download result 1").click()
    assert download.value.suggested_filename.endswith("-1.png")
    assert Path(download.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    page.get_by_role("button", name="Use result 1 as input").click()
    inputs = page.get_by_role("img", name=re.compile("^Input"))
    expect(inputs).to_have_count(1)
    expect(inputs.first).to_have_attribute("alt", "Input 1: previous result")
    expect(page.get_by_label("Instruction")).to_be_focused()


def test_dropped_and_pasted_images_are_capped_at_three(page: Page, page_server: RunningServer) -> None:
    open_with_key(page, page_server.key)
    drop_image(page, "image-0.png", png_bytes((64, 64)))
    paste_image(page, "image-1.png", png_bytes((64, 64)))
    expect(page.get_by_role("img", name="Input 2: image-1.png")).to_be_visible()
    drop_image(page, "image-2.png", png_bytes((64, 64)))
    drop_image(page, "image-3.png", png_bytes((64, 64)))
    expect(page.get_by_role("img", name=re.compile("^Input"))).to_have_count(3)
    expect(page.get_by_role("alert")).to_contain_text("Up to 3 input images")
    page.get_by_role("button", name="Remove input 1 (image-0.png)").click()
    expect(page.get_by_role("img", name=re.compile("^Input"))).to_have_count(2)


def test_the_form_works_from_the_keyboard(page: Page, page_server: RunningServer) -> None:
    open_with_key(page, page_server.key)
    page.get_by_label("Model").select_option("qwen-image-2.0")
    page.get_by_label("Size (W*H)").fill("512*512")
    page.get_by_label("Instruction").focus()
    page.keyboard.type("a red kite")
    for _ in range(20):
        if page.evaluate("document.activeElement.id") == "submit":
            break
        page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.get_by_role("img", name="Result 1 of 1")).to_be_visible(timeout=120_000)
