"""The search page in a real browser: headless Chromium (Debian's) driven by chromium-driver + selenium,
against a service over real HTTP holding a small demo corpus. Screenshots go to var/test-artifacts/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from service import demo
from tests.support.page_service import small_demo, small_service  # noqa: F401 (fixtures)
from training.datasets.openclipart import DEFAULT_ROOT

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "var" / "test-artifacts"
APPLE = DEFAULT_ROOT / "png" / "food" / "fruit" / "an_apple_01.png"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
WAIT_SECONDS = 30


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    for program in ("chromium", "chromedriver"):
        assert shutil.which(program), f"{program} missing: `make bootstrap` installs the Debian packages"
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=DriverService(shutil.which("chromedriver")), options=options)
    driver.set_window_size(1280, 900)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser: WebDriver, small_service: str) -> WebDriver:  # noqa: F811 (the fixture imported above)
    browser.set_window_size(1280, 900)
    browser.get(small_service + "/")
    wait(browser, lambda b: "indexed" in b.find_element(By.ID, "model").text)
    return browser


def wait(browser: WebDriver, condition, seconds: float = WAIT_SECONDS):
    return WebDriverWait(browser, seconds).until(condition)


def screenshot(browser: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"page-{name}.png"
    browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    return path


def cards(browser: WebDriver) -> list:
    return browser.find_elements(By.CSS_SELECTOR, "#images .card")


def loaded_thumbnails(browser: WebDriver) -> int:
    """Result pictures the browser decoded (complete, with real pixels)."""
    images = "[...document.querySelectorAll('#images .card img')]"
    return browser.execute_script(f"return {images}.filter(i => i.complete && i.naturalWidth > 0).length")


def text_rows(browser: WebDriver) -> list:
    return browser.find_elements(By.CSS_SELECTOR, "#texts .list li")


def search(browser: WebDriver, text: str) -> None:
    box = browser.find_element(By.ID, "text")
    box.clear()
    box.send_keys(text, Keys.ENTER)  # the keyboard submits the form


def shown_titles(browser: WebDriver) -> list[str]:
    return browser.execute_script("return [...document.querySelectorAll('#images .card img')].map(i => i.alt)")


def url_query(browser: WebDriver) -> dict[str, list[str]]:
    return parse_qs(urlsplit(browser.current_url).query)


def heading(browser: WebDriver) -> str:
    return browser.find_element(By.ID, "query").text


def api_titles(base_url: str, path: str, body: dict) -> list[str]:
    reply = httpx.post(f"{base_url}{path}", json=body)
    assert reply.status_code == 200, reply.text
    return [hit["metadata"]["title"] for hit in reply.json()["results"]]


def test_a_typed_query_shows_thumbnails_with_distance_and_bucket(page: WebDriver) -> None:
    search(page, "red apple fruit")
    wait(page, lambda b: len(cards(b)) == 12 and loaded_thumbnails(b) == 12)
    first = cards(page)[0].text
    assert "distance" in first and "bucket" in first and "More like this" in first
    assert "encode" in page.find_element(By.CSS_SELECTOR, "#images .timing").text
    assert page.find_element(By.ID, "error").is_displayed() is False
    assert page.find_element(By.ID, "texts").is_displayed() is False
    screenshot(page, "text-query")


def test_load_more_appends_the_next_results_until_there_are_no_more(page: WebDriver, small_service: str) -> None:  # noqa: F811
    search(page, "fruit")
    wait(page, lambda b: len(cards(b)) == 12)
    more = page.find_element(By.CSS_SELECTOR, "#images .more")
    clicks = 0
    while more.is_displayed():
        shown, clicks = len(cards(page)), clicks + 1
        more.click()
        wait(page, lambda b, before=shown: len(cards(b)) > before or not more.is_displayed())
    everything = httpx.post(f"{small_service}/v1/search/text-to-image", json={"text": "fruit", "k": 100}).json()
    assert len(everything["results"]) > 12 and clicks >= 1  # more than one page to show
    shown = shown_titles(page)
    assert len(shown) == len(everything["results"])  # all that the query reaches, each once, in order
    assert shown == [h["metadata"]["title"] for h in everything["results"]]


def test_an_uploaded_image_shows_matching_texts_and_similar_images(page: WebDriver, small_service: str) -> None:  # noqa: F811
    page.find_element(By.ID, "image").send_keys(str(APPLE))
    wait(page, lambda b: len(text_rows(b)) == 12 and len(cards(b)) == 12 and loaded_thumbnails(b) == 12)
    assert "distance" in text_rows(page)[0].text and "distance" in cards(page)[0].text
    assert page.find_element(By.CSS_SELECTOR, "#query").text == f"Texts and similar images for “{APPLE.name}”"
    assert page.find_element(By.CSS_SELECTOR, "#images .note").is_displayed() is False
    upload = {"files": {"image": APPLE.read_bytes()}, "data": {"k": "12"}}  # the page's first page of results
    similar = httpx.post(f"{small_service}/v1/search/image-to-image/upload", **upload)
    assert similar.status_code == 200, similar.text
    assert shown_titles(page) == [h["metadata"]["title"] for h in similar.json()["results"]]  # the API's, in order
    screenshot(page, "image-upload")


def test_more_like_this_searches_both_modalities_with_the_items_code(page: WebDriver) -> None:
    search(page, "red apple fruit")
    wait(page, lambda b: len(cards(b)) == 12)
    title = cards(page)[0].find_element(By.CSS_SELECTOR, ".title").text
    cards(page)[0].find_element(By.CSS_SELECTOR, "button.like").click()
    wait(page, lambda b: len(cards(b)) == 12 and len(text_rows(b)) == 12 and loaded_thumbnails(b) == 12)
    assert page.find_element(By.ID, "query").text == f"More like “{title}”"
    assert page.switch_to.active_element.get_attribute("id") == "query"  # focus follows the new results
    screenshot(page, "more-like-this")


def test_more_like_this_is_reachable_by_keyboard_alone(page: WebDriver) -> None:
    search(page, "apple")
    wait(page, lambda b: len(cards(b)) == 12)
    for _ in range(40):  # tab from the search box to the first result's button
        ActionChains(page).send_keys(Keys.TAB).perform()  # as a person presses it (not typed into an input)
        if page.switch_to.active_element.get_attribute("class") == "like":
            break
    assert page.switch_to.active_element.get_attribute("class") == "like"
    ActionChains(page).send_keys(Keys.ENTER).perform()
    wait(page, lambda b: b.find_element(By.ID, "query").text.startswith("More like"))


def test_a_corrupt_upload_shows_the_apis_own_error(page: WebDriver, small_service: str, tmp_path: Path) -> None:  # noqa: F811
    broken = tmp_path / "broken.png"
    broken.write_bytes(APPLE.read_bytes()[:200])  # a PNG cut short
    api = httpx.post(f"{small_service}/v1/search/image-to-text/upload", files={"image": broken.read_bytes()})
    assert api.status_code == 422
    page.find_element(By.ID, "image").send_keys(str(broken))
    error = page.find_element(By.ID, "error")
    wait(page, lambda b: error.is_displayed())
    assert error.text == f"422: {api.json()['detail']}"
    screenshot(page, "corrupt-upload")


def test_a_link_with_a_text_query_shows_its_results_and_a_reload_keeps_them(
    browser: WebDriver,
    small_service: str,  # noqa: F811
) -> None:
    expected = api_titles(small_service, "/v1/search/text-to-image", {"text": "red apple fruit", "k": 12})
    browser.get(small_service + "/?q=red+apple+fruit")
    wait(browser, lambda b: len(cards(b)) == 12)
    assert shown_titles(browser) == expected and heading(browser) == "Images for “red apple fruit”"
    assert browser.find_element(By.ID, "text").get_attribute("value") == "red apple fruit"
    assert browser.title == "Images for “red apple fruit” · xmhash"
    browser.refresh()
    wait(browser, lambda b: len(cards(b)) == 12)
    assert shown_titles(browser) == expected and url_query(browser) == {"q": ["red apple fruit"]}


def test_a_more_like_this_link_searches_with_the_items_stored_code(browser: WebDriver, small_service: str) -> None:  # noqa: F811
    [apple] = httpx.post(f"{small_service}/v1/search/text-to-image", json={"text": "apple", "k": 1}).json()["results"]
    expected = api_titles(small_service, "/v1/search/similar", {"id": apple["id"], "target": "image", "k": 12})
    browser.get(small_service + "/?" + urlencode({"similar": apple["id"]}))
    wait(browser, lambda b: len(cards(b)) == 12 and len(text_rows(b)) == 12)
    assert heading(browser) == f"More like “{apple['metadata']['title']}”" and shown_titles(browser) == expected


def test_a_link_to_an_unknown_item_shows_the_apis_404(browser: WebDriver, small_service: str) -> None:  # noqa: F811
    browser.get(small_service + "/?similar=img:nowhere")
    error = browser.find_element(By.ID, "error")
    wait(browser, lambda b: error.is_displayed())
    assert error.text == "404: no item with id 'img:nowhere'" and not cards(browser)


def test_every_search_is_in_the_url_and_back_and_forward_step_through_them(page: WebDriver) -> None:
    search(page, "red apple fruit")
    wait(page, lambda b: len(cards(b)) == 12)
    assert url_query(page) == {"q": ["red apple fruit"]}
    first = cards(page)[0]
    item_title = first.find_element(By.CSS_SELECTOR, ".title").text
    first.find_element(By.CSS_SELECTOR, "button.like").click()
    wait(page, lambda b: heading(b) == f"More like “{item_title}”")
    assert list(url_query(page)) == ["similar"]

    page.back()
    wait(page, lambda b: heading(b) == "Images for “red apple fruit”" and len(cards(b)) == 12)
    assert url_query(page) == {"q": ["red apple fruit"]}
    page.forward()
    wait(page, lambda b: heading(b) == f"More like “{item_title}”" and len(text_rows(b)) == 12)
    page.back()
    page.back()  # the page as it opened: no query, nothing shown
    wait(page, lambda b: heading(b) == "" and not cards(b))
    assert url_query(page) == {} and page.find_element(By.ID, "text").get_attribute("value") == ""


def test_an_upload_leaves_no_stale_query_in_the_url(page: WebDriver) -> None:
    search(page, "fruit")
    wait(page, lambda b: len(cards(b)) == 12)
    page.find_element(By.ID, "image").send_keys(str(APPLE))
    wait(page, lambda b: len(text_rows(b)) == 12)
    assert url_query(page) == {}  # a reload shows the page, not the earlier text's results


def test_while_the_demo_corpus_loads_the_page_says_how_far_it_is(
    browser: WebDriver,
    small_service: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What ``/readyz`` says of the demo corpus (``demo.progress``, replaced here: the service runs in
    this process) is what the page says, polled until the corpus is complete."""
    progress = {"state": "ingesting", "done": 1200, "total": 6873}
    monkeypatch.setattr(demo, "progress", lambda runtime: dict(progress))
    browser.get(small_service + "/")
    notice = browser.find_element(By.ID, "corpus")
    wait(browser, lambda b: notice.is_displayed())
    assert notice.text.startswith("Demo corpus loading: 1,200 of 6,873 items.")
    screenshot(browser, "corpus-loading")
    progress.update(state="done", done=6873)
    wait(browser, lambda b: not notice.is_displayed())  # gone at the next poll


def test_the_page_fits_a_phone_width_screen(page: WebDriver) -> None:
    page.set_window_size(390, 844)
    search(page, "red apple fruit")
    wait(page, lambda b: len(cards(b)) == 12 and loaded_thumbnails(b) == 12)
    overflow = page.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a phone screen"
    columns = page.execute_script(
        "return getComputedStyle(document.querySelector('#images .grid')).gridTemplateColumns"
    )
    assert len(columns.split()) == 2
    screenshot(page, "phone")
