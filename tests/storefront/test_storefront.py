"""The storefront page in real Chromium over the real stack (see conftest.py): what a person sees and does.

Each test opens its own page and ends by checking that the browser logged no error; screenshots go to
``test-artifacts/storefront/``. Users are distinct per test, so no test depends on another's clicks.
"""

from __future__ import annotations

import re
import socket
from collections import Counter
from contextlib import closing

import pytest

from recsys_assets.lib.top_category import CATEGORIES
from tests.support.api_server import ApiServer

pytestmark = pytest.mark.integration

MIDDAY = "13"  # a fixed time of day: the lists do not move with the clock


class Shop:
    """One browser page on the storefront, with what the tests ask of it."""

    def __init__(self, page, base_url: str, screenshots) -> None:
        self.page = page
        self.base_url = base_url
        self.screenshots = screenshots
        self.errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"console.error: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.set_default_timeout(30_000)

    def open(self, **params) -> Shop:
        query = "&".join(f"{k}={v}" for k, v in {"hour": MIDDAY, **params}.items())
        self.page.goto(f"{self.base_url}/store/?{query}")
        self.wait_rendered(0)
        return self

    def rendered(self) -> int:
        return int(self.page.locator("#carousel").get_attribute("data-rendered") or 0)

    def wait_rendered(self, after: int) -> None:
        """Until a list newer than request ``after`` is on the page."""
        self.page.wait_for_function(f"Number(document.querySelector('#carousel').dataset.rendered) > {after}")

    def cards(self) -> list[dict]:
        return self.page.locator("#carousel .card").evaluate_all(
            "els => els.map(e => ({id: Number(e.dataset.itemId), category: e.dataset.category,"
            " name: e.querySelector('.card-name').textContent, isNew: e.classList.contains('is-new')}))")

    def ids(self) -> list[int]:
        return [c["id"] for c in self.cards()]

    def interested(self, item_id: int) -> None:
        """Press "Interested" on a card and wait for the refreshed list and the change summary."""
        seen = int(self.page.locator("#changes").get_attribute("data-clicks") or 0)
        self.page.locator(f'#carousel .card[data-item-id="{item_id}"] button.interested').click()
        self.page.wait_for_function(f"Number(document.querySelector('#changes').dataset.clicks) > {seen}")

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.screenshots / f"{name}.png"), full_page=True)

    def assert_no_console_errors(self, allowed: str | None = None) -> None:
        errors = [e for e in self.errors if not (allowed and re.search(allowed, e))]
        assert errors == [], f"the browser logged errors: {errors}"


@pytest.fixture()
def shop(browser, api_server, screenshots):
    page = browser.new_page()
    try:
        yield Shop(page, api_server.url, screenshots)
    finally:
        page.close()


def test_authentication_is_on_and_the_page_writes_with_its_http_only_session_cookie(shop, api_server):
    import httpx

    shop.open(user=-1, device=1, k=10)
    cookies = {c["name"]: c for c in shop.page.context.cookies(api_server.url)}
    assert cookies["recsys_session"]["httpOnly"] and cookies["recsys_session"]["sameSite"] == "Strict"
    assert shop.page.evaluate("document.cookie") == ""  # the page's scripts cannot read it
    click = {"user_id": -1, "item_id": 1, "device_type": 1}
    assert httpx.post(f"{api_server.url}/events", json=click, timeout=30).status_code == 401  # no cookie, no token
    status = shop.page.evaluate("""async (click) => (await fetch('/events', {method: 'POST',
        headers: {'content-type': 'application/json'}, body: JSON.stringify(click)})).status""", click)
    assert status == 201


def _top_category(shop) -> str:
    return shop.page.locator("#profile-top-category").inner_text().strip()


# -- what the page shows -------------------------------------------------------------------------------------
def test_the_page_shows_product_cards_with_rendered_images_and_details(shop, api_server):
    page = shop.page
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(f"{api_server.url}/")  # the API's root leads to the store
    assert page.url == f"{api_server.url}/store/"
    shop.wait_rendered(0)
    shop.open(user=-1, device=0, k=10)
    assert page.get_by_role("heading", name="Recommended for you").is_visible()
    cards = page.locator("#carousel .card")
    assert cards.count() == 10
    first = cards.first
    assert first.locator(".card-name").inner_text()
    assert first.locator(".card-category").inner_text() in CATEGORIES
    assert first.locator(".card-style").inner_text()
    assert re.fullmatch(r"\$[\d,]+\.\d\d", first.locator(".card-price").inner_text())
    scores = [float(s) for s in cards.locator(".score-num").all_inner_texts()]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    # the product images are the rendered catalogue pictures, loaded from the API
    page.wait_for_function("[...document.querySelectorAll('#carousel img')].every(i => i.complete)")
    widths = cards.locator("img").evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) == 10 and min(widths) > 0
    assert page.locator("#health").get_attribute("data-state") == "ready"
    assert "anonymous" in page.locator("#context-line").inner_text()
    assert page.locator("#reset").is_disabled()  # an anonymous shopper has no seen items
    # everything comes from the API itself: no CDN, no font or script from elsewhere
    outside = [u for u in requested if not u.startswith((f"{api_server.url}/", "data:"))]
    assert outside == [] and any(u.endswith("/store/assets/app.js") for u in requested)
    shop.shot("01-anonymous-desktop")
    shop.assert_no_console_errors()


def test_switching_device_changes_an_anonymous_shoppers_list(shop):
    page = shop.open(user=-1, device=0).page
    desktop = shop.ids()
    for device, label in ((1, "Mobile"), (2, "Tablet")):
        before, n = shop.ids(), shop.rendered()
        page.locator("#device label", has_text=label).click()  # the visible segment (the radio is beneath it)
        shop.wait_rendered(n)
        assert page.get_by_role("radio", name=label).is_checked()
        after = shop.cards()
        assert [c["id"] for c in after] != before, f"switching to {label} did not change the list"
        fresh = [c["id"] for c in after if c["id"] not in set(before)]
        assert [c["id"] for c in after if c["isNew"]] == fresh  # what changed is marked
        assert page.locator("#change-context").inner_text().startswith(
            f"Switching to {label.lower()} changed {len(fresh)} of 10 items")
        assert f"on {label.lower()}" in page.locator("#context-line").inner_text()
        shop.shot(f"02-anonymous-{label.lower()}")
    assert shop.ids() != desktop
    assert "device=2" in page.url  # the context is in the address, so a view can be shared
    shop.assert_no_console_errors()


def test_interest_in_three_items_of_one_category_hides_them_and_shifts_the_top_category(shop, stack):
    user = 0
    page = shop.open(user=user, device=1, k=30).page
    page.wait_for_selector("#profile-top-category")
    before = _top_category(shop)
    assert before == (CATEGORIES[stack.top_category[user]] if stack.top_category[user] >= 0 else "none yet")
    counts = Counter(c["category"] for c in shop.cards() if c["category"] != before)
    category, n = counts.most_common(1)[0]
    assert n >= 3, f"the tiny world's list for user {user} has no other category 3 times: {counts}"

    clicked = []
    for step in range(3):
        item = next(c for c in shop.cards() if c["category"] == category)
        shop.interested(item["id"])
        clicked.append(item["id"])
        ids = shop.ids()
        assert item["id"] not in ids, f"{item['name']} is still recommended after the click"
        assert len(ids) == 30
        gone = page.locator("#change-gone").inner_text()
        assert gone == f'"{item["name"]}" left the list (now filtered as seen).'
        fresh = [c["id"] for c in shop.cards() if c["isNew"]]
        assert re.match(rf"{len(fresh)} new items? in the list" if fresh else "No new items",
                        page.locator("#change-new").inner_text())
        if step == 0:
            assert page.locator("#change-top-before").inner_text().strip() == before
        assert page.locator("#change-top-after").inner_text().strip() == category
        assert category in page.locator("#change-interests").inner_text()  # three clicks outweigh the snapshot
        shop.shot(f"03-interested-{step + 1}")
    assert not set(clicked) & set(shop.ids())
    # the shift, as the online store holds it, and the clicks in the chart
    assert _top_category(shop) == category
    assert page.locator("#profile-window").inner_text() == "3 clicks in the 24 h window"
    assert page.locator(f'#chart rect.bar-clicks[data-category="{category}"]').count() == 1
    assert page.locator("#chart rect.bar-clicks").count() == 1
    assert page.locator("#chart svg").get_attribute("role") == "img"
    assert f"{category}: " in page.locator("#chart desc").text_content()
    shop.assert_no_console_errors()


def test_diversity_mode_samples_by_score_and_the_toggle_returns_to_the_top_k(shop):
    page = shop.open(user=7, device=0, k=10).page
    top = shop.ids()
    n = shop.rendered()
    with page.expect_response(lambda r: "/recommendations?" in r.url and "diversity=true" in r.url) as answer:
        page.get_by_role("switch", name="Diversity mode").check()
    shop.wait_rendered(n)
    sampled = answer.value.json()["items"]
    assert shop.ids() == [i["item_id"] for i in sampled]  # the page shows the API's answer as it is
    assert shop.ids() != top
    assert "diversity mode: sampled by score" in page.locator("#context-line").inner_text()
    shop.shot("04-diversity")
    n = shop.rendered()
    page.get_by_role("switch", name="Diversity mode").uncheck()
    shop.wait_rendered(n)
    assert shop.ids() == top
    shop.assert_no_console_errors()


def test_a_new_shopper_starts_cold_and_reset_forgets_the_seen_items(shop):
    page = shop.open(device=1, k=10).page
    new_option = page.locator("#user option", has_text="New shopper")
    new_id = new_option.get_attribute("value")
    n = shop.rendered()
    page.get_by_label("Shopper", exact=True).select_option(new_id)
    shop.wait_rendered(n)
    page.wait_for_selector("#profile-top-category")
    assert _top_category(shop) == "none yet"
    assert "cold start" in page.locator("#profile").inner_text()
    shop.shot("05-new-shopper")
    item = shop.cards()[0]
    shop.interested(item["id"])
    assert page.locator("#change-top-before").inner_text().strip() == "none yet"
    assert page.locator("#change-top-after").inner_text().strip() == item["category"]
    assert item["id"] not in shop.ids()

    n = shop.rendered()
    page.get_by_role("button", name="Reset my seen items").click()
    shop.wait_rendered(n)
    notice = page.locator("#notice")
    assert notice.is_visible() and "Seen items reset" in notice.inner_text()
    page.wait_for_function("document.querySelector('#profile-window')?.textContent.startsWith('0 clicks')")
    assert item["id"] in shop.ids()  # no longer filtered as seen: the top item is back
    shop.shot("06-reset")
    shop.assert_no_console_errors()


# -- accessibility -------------------------------------------------------------------------------------------
def test_controls_have_labels_and_everything_works_from_the_keyboard(shop):
    page = shop.open(user=9, device=0, k=10).page
    unnamed = page.evaluate("""() => [...document.querySelectorAll('input, select, button, [tabindex="0"]')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
        .map(e => e.outerHTML.slice(0, 80))""")
    assert unnamed == []
    assert page.locator("img:not([alt])").count() == 0
    for name in ("Shopper", "Time of day (UTC)", "Items"):
        assert page.get_by_label(name, exact=True).count() == 1, name
    assert page.get_by_role("group", name="Device").get_by_role("radio").count() == 4
    first = shop.cards()[0]
    assert page.get_by_role("img", name=first["name"], exact=True).count() >= 1
    assert page.get_by_role("button", name=f"Interested in {first['name']}").count() == 1
    # messages are announced: errors as an alert, progress and health as polite status updates
    assert page.locator("#alert").get_attribute("role") == "alert"
    assert page.locator("#notice").get_attribute("aria-live") == "polite"
    assert page.locator("#health").get_attribute("role") == "status"

    # Tab order: the skip link first, then the controls in reading order, each with a visible focus ring
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to recommendations"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "user"
    assert page.evaluate("getComputedStyle(document.activeElement).boxShadow") != "none"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "device-0"
    ring = page.evaluate("getComputedStyle(document.querySelector('label[for=device-0]')).boxShadow")
    assert ring != "none", "the focused device segment shows no focus ring"
    n = shop.rendered()
    page.keyboard.press("ArrowRight")  # arrow keys move within the radio group and switch the device
    shop.wait_rendered(n)
    assert page.get_by_role("radio", name="Mobile").is_checked()
    order = []
    for _ in range(6):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id"))
    assert order == ["hour", "k", "diversity", "refresh", "reset", "prev"]

    # the skip link leads to the list, Tab to a card's button; Enter presses it; focus goes to the summary
    page.locator(".skip-link").focus()
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "recs-heading"
    for _ in range(6):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('interested')"):
            break
    label = page.evaluate("document.activeElement.getAttribute('aria-label')")
    assert label and label.startswith("Interested in ")
    shop.shot("07-keyboard-focus")
    seen = int(page.locator("#changes").get_attribute("data-clicks") or 0)
    page.keyboard.press("Enter")
    page.wait_for_function(f"Number(document.querySelector('#changes').dataset.clicks) > {seen}")
    assert page.evaluate("document.activeElement.id") == "changes-heading"
    assert label.removeprefix("Interested in ") in page.locator("#changes").inner_text()
    shop.assert_no_console_errors()


# -- when the backend is slow or down ------------------------------------------------------------------------
@pytest.fixture()
def page(browser, screenshots):
    page = browser.new_page()
    try:
        yield page
    finally:
        page.close()


def test_a_hanging_recommender_is_announced_as_slow_then_as_unavailable(page, stack, screenshots):
    # a "Triton" that accepts connections and never answers: the API gives up after its timeout (a 503)
    with closing(socket.socket()) as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        config = stack.config(triton_url=f"http://127.0.0.1:{hung.getsockname()[1]}", triton_timeout_s=3.0)
        with ApiServer(config) as server:
            shop = Shop(page, server.url, screenshots)
            page.goto(f"{server.url}/store/?user=-1&device=0&hour={MIDDAY}")
            notice = page.locator('#notice[data-kind="slow"]')
            notice.wait_for(state="visible")
            assert "taking longer than usual" in notice.inner_text()
            assert "Loading" in page.locator("#carousel").inner_text()  # not blank while waiting
            shop.shot("08-slow")
            alert = page.get_by_role("alert")
            alert.wait_for(state="visible")
            text = alert.inner_text()
            assert "Recommendations could not be loaded" in text and "unreachable" in text
            assert re.search(r"Retrying in \d+ s", text)
            assert alert.get_by_role("button", name="Retry now").count() == 1
            placeholder = page.locator("#carousel .placeholder.error")
            assert "No recommendations yet: the service is not answering" in placeholder.inner_text()
            page.wait_for_function("document.getElementById('health').dataset.state === 'degraded'")
            assert "triton" in page.locator("#health").inner_text()
            shop.shot("09-unavailable")
            page.close()  # before the server stops: its retries would otherwise log refused connections
    shop.assert_no_console_errors(allowed=r"status of 503")


def test_the_page_recovers_by_itself_when_the_ensemble_is_back(shop, stack):
    page = shop.open(user=11, device=2, k=10).page
    listed = shop.ids()
    with stack.triton.client() as triton:
        triton.unload_model("ensemble_model")
    try:
        n = shop.rendered()
        page.get_by_role("button", name="Refresh").click()
        alert = page.get_by_role("alert")
        alert.wait_for(state="visible")
        assert "not being served" in alert.inner_text()
        assert shop.ids() == listed and "stale" in page.locator("#carousel").get_attribute("class")
        assert "Showing the last list received" in page.locator("#context-line").inner_text()
        shop.shot("10-ensemble-unloaded")
    finally:
        stack.triton.load(["ensemble_model"])
    shop.wait_rendered(n)  # the countdown retried on its own
    assert not alert.is_visible() and shop.ids() == listed
    assert "stale" not in page.locator("#carousel").get_attribute("class")
    shop.assert_no_console_errors(allowed=r"status of 503")


def test_an_api_that_went_away_is_announced_and_the_last_list_stays(page, stack, screenshots):
    server = ApiServer(stack.config()).start()
    try:
        shop = Shop(page, server.url, screenshots).open(user=-1, device=1, k=10)
        listed = shop.ids()
    finally:
        server.stop()
    page.get_by_role("button", name="Refresh").click()
    alert = page.get_by_role("alert")
    alert.wait_for(state="visible")
    assert "cannot be reached" in alert.inner_text() and "make serve" in alert.inner_text()
    assert shop.ids() == listed
    page.wait_for_function("document.getElementById('health').dataset.state === 'down'")
    shop.shot("11-api-unreachable")
    page.close()
    # the request in flight when the server stopped may be reset rather than refused (seen on a loaded machine)
    shop.assert_no_console_errors(allowed=r"ERR_CONNECTION_(REFUSED|RESET)")
