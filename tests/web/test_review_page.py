"""The review page in a real browser: headless Chromium (Debian's package) drives `ranker web`,
run as its own process against a real gRPC server: postings, a posting's top 10 with reasons,
a shortlist click recorded as an outcome, "why is A above B", a candidate's fields."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ranker.domain import Posting, Stage
from tests.fixtures.server import ServerHandle, seed

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HAVE_CHROMIUM = Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()
# Set to refresh the screenshots the README shows (docs/review-*.png).
UPDATE_SCREENSHOTS = os.environ.get("UPDATE_SCREENSHOTS") == "1"


@pytest.fixture(scope="module")
def review_page(recruiter_served: ServerHandle) -> Iterator[str]:
    """`ranker web --port 0` against the recruiter server; its base URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKER_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from ranker.cli import main; main()",
            "web",
            "--port",
            "0",
            "--target",
            recruiter_served.address,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("review page on http://"), (line, proc.stderr and proc.stderr.read())
        url = line.split()[3].rstrip("/")
        # Serving starts right after the line is printed: wait until it answers.
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/", timeout=5).read()
                break
            except (urllib.error.URLError, ConnectionError):
                import time

                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    if not HAVE_CHROMIUM:
        pytest.skip(
            "Chromium is not installed (/usr/bin/chromium and /usr/bin/chromedriver); "
            "`make test` installs them as root: apt-get install -y chromium chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _screenshot(driver: object, path: Path, width: int, max_height: int) -> None:
    d: object = driver
    d.set_window_size(width, 900)  # type: ignore[attr-defined]
    height = d.execute_script("return document.documentElement.scrollHeight")  # type: ignore[attr-defined]
    d.set_window_size(width, min(int(height) + 20, max_height))  # type: ignore[attr-defined]
    d.save_screenshot(str(path))  # type: ignore[attr-defined]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if UPDATE_SCREENSHOTS:
        shutil.copyfile(path, ROOT / "docs" / path.name)


def _click_through(driver: object, element: object) -> None:
    """Click a link or a form button that loads a new page, and wait for that page: the click
    may return before the navigation, and the next lookup would then read the old page.

    The old page is marked with a window property, which a new document does not have. Selenium's
    `staleness_of` is not used: while the old document is being torn down, Chrome can answer a
    query on its element with a generic "Node ... does not belong to the document" error rather
    than a stale-element one, and that failed a CI run. Any WebDriver error while the page
    changes means "not yet", so the wait ignores them."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(driver, WebDriver) and isinstance(element, WebElement)
    driver.execute_script("window.__reviewTestOldPage = true")
    element.click()
    wait = WebDriverWait(driver, 60, ignored_exceptions=(WebDriverException,))
    wait.until(
        lambda d: d.execute_script(
            "return window.__reviewTestOldPage !== true && document.readyState === 'complete'"
        )
    )


def test_review_a_posting_and_shortlist_a_candidate(
    browser: object, review_page: str, recruiter_served: ServerHandle, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    d: WebDriver = browser  # type: ignore[assignment]
    d.get(review_page + "/")
    assert "decision aid" in d.find_element(By.ID, "notice").text
    assert d.find_element(By.ID, "model-version").text == "v0001"
    _click_through(d, d.find_element(By.CSS_SELECTOR, 'a[href="/postings/R-MADRID"]'))

    assert d.find_element(By.TAG_NAME, "h1").text.startswith("Senior Financial Analyst")
    facts = d.find_element(By.ID, "posting").text
    assert "excel, budgeting, variance analysis" in facts and "5 years" in facts
    rows = d.find_elements(By.CSS_SELECTOR, "tr.result")
    assert len(rows) == 10
    for row in rows:
        reasons = row.find_elements(By.CSS_SELECTOR, "ul.reasons li")
        assert reasons and all(r.text for r in reasons)
    request_id = d.find_element(By.ID, "request-id").text
    assert len(request_id) == 32
    expected = recruiter_served.stub  # the same top 10 as the service gives
    from ranker.v1 import ranker_pb2 as pb

    top = expected.RankCandidates(pb.RankCandidatesRequest(posting_id="R-MADRID", top_k=10))
    shown = [r.get_attribute("id")[2:] for r in rows]
    assert shown == [c.candidate_id for c in top.results]
    _screenshot(d, tmp_path / "review-top10.png", 1280, 2400)
    _screenshot(d, tmp_path / "review-phone.png", 390, 1500)
    d.set_window_size(1280, 1000)

    # Shortlist the third candidate: a POST form, then back to the ranking with a confirmation.
    chosen = shown[2]
    before = recruiter_served.pipeline.store.list_outcomes()
    _click_through(d, d.find_element(By.CSS_SELECTOR, f'button[value="shortlist-{chosen}"]'))
    banner = d.find_element(By.ID, "confirmation").text
    assert chosen in banner and "shortlisted" in banner and "screened" in banner
    stored = [
        o
        for o in recruiter_served.pipeline.store.list_outcomes()
        if o not in before and o.posting_id == "R-MADRID"
    ]
    assert [(o.candidate_id, o.stage) for o in stored] == [(chosen, Stage.SCREENED)]

    # Reject another one.
    _click_through(d, d.find_element(By.CSS_SELECTOR, f'button[value="reject-{shown[4]}"]'))
    assert "rejected" in d.find_element(By.ID, "confirmation").text
    assert any(
        o.candidate_id == shown[4] and o.stage == Stage.REJECTED
        for o in recruiter_served.pipeline.store.list_outcomes()
    )

    # Why is #1 above #2?
    _click_through(d, d.find_elements(By.CSS_SELECTOR, "a.why")[0])
    summary = d.find_element(By.ID, "summary").text
    assert shown[0] in summary and shown[1] in summary
    assert d.find_elements(By.CSS_SELECTOR, "#separating li")

    # A candidate's stored fields (not vectors).
    d.get(f"{review_page}/candidates/R-C-LOCAL?posting=R-MADRID")
    card = d.find_element(By.ID, "candidate").text
    assert "Madrid" in card and "excel, budgeting, variance analysis, sql" in card
    assert "Monthly reports" in d.find_element(By.CSS_SELECTOR, "pre.cv").text


def test_user_text_is_escaped(review_page: str, recruiter_served: ServerHandle) -> None:
    seed(
        recruiter_served,
        postings=[
            Posting(
                id="R-XSS",
                title='<script>alert("x")</script> Analyst',
                description="<img src=x onerror=alert(1)> budgets",
            )
        ],
    )
    html = urllib.request.urlopen(review_page + "/postings/R-XSS", timeout=30).read().decode()
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; Analyst" in html


def test_unknown_posting_and_foreign_post(review_page: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(review_page + "/postings/P-none", timeout=30)
    assert e.value.code == 404 and "UpsertPostings" in e.value.read().decode()
    forged = urllib.request.Request(
        review_page + "/postings/R-MADRID/feedback",
        data=b"candidate_id=R-C-LOCAL&action=reject&k=10",
        headers={
            "Origin": "http://evil.example",
            "Content-Type": "application/x-www-form-urlencoded",
        },
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(forged, timeout=30)
    assert e.value.code == 403
