"""The analyst console, driven in a real headless Chromium.

Reads what `warden demo --keep-running` printed (the console's address, sign-in tokens and
the admin token), then, as the people of the demo would:

1. ana (soc-analyst) signs in; an agent asks to isolate a tier-0 host; the approval appears
   in her inbox without a reload; she approves it with the keyboard only (labels, focus
   order); the action executes in the lab.
2. two IAM owners each have the inbox open; one approves a quorum-2 account disable and the
   other sees "1 of 2" appear without a reload, then approves; the account is disabled.
3. olga (incident commander) presses the emergency stop; the banner appears on her page and,
   without a reload, on the other analyst's.

4. ana opens the Reports page: the track record of the agents she oversees (the outcome mix
   over time, calibration, approval load) and the controls with their evidence; then the
   self-contained HTML reports (`warden report autonomy|controls --output html` and `warden
   policy simulate --output html` of the report's own proposal, given as files) open as they
   are, with nothing fetched.

Screenshots of the inbox, activity, action, agents and reports pages, and of both HTML reports,
go to the directory given.
"""

import json
import re
import sys
import time
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

EDR = "spiffe://acme.example/soc/edr-responder"
IAM = "spiffe://acme.example/soc/identity-responder"

demo_out, shots = sys.argv[1], sys.argv[2]
# The standalone reports, rendered from the demo's data directory.
html_reports = sys.argv[3:]
text = open(demo_out).read()
base = re.search(r"^The analyst console: (http://\S+)/console$", text, re.M).group(1)
ana = re.search(r"sign in as ana \(soc-analyst\) with (\S+)", text).group(1)
olga = re.search(r"or as olga \(incident commander\) with (\S+)", text).group(1)
admin = re.search(r"WARDEN_TOKEN=(\S+)", text).group(1)
lab = re.search(r"curl (http://\S+)/state", text).group(1)

checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1
    print(f"  ok  {what}")


def api(method, path, token, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data, method=method,
                                 headers={"authorization": "Bearer " + token, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def lab_state():
    with urllib.request.urlopen(lab + "/state", timeout=5) as r:
        return json.load(r)


def user(name, role):
    status, u = api("POST", "/v1/users", admin, {"id": name, "roles": [role]})
    assert status in (200, 201), u
    return u["token"]


def svid(agent):
    status, t = api("POST", "/v1/agents/" + urllib.parse.quote(agent, safe="") + "/token", admin, {"ttl": "30m"})
    assert status == 200, t
    return t["token"]


def browser():
    o = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,1100",
              "--disable-gpu", "--force-prefers-reduced-motion"):
        o.add_argument(a)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    o.binary_location = "/usr/bin/chromium"
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)
    d.set_page_load_timeout(30)
    return d


def sign_in(d, token):
    d.get(base + "/console/sign-in")
    d.find_element(By.ID, "token").send_keys(token)
    d.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    WebDriverWait(d, 10).until(EC.url_contains("/console/inbox"))


def sign_out(d):
    d.find_element(By.CSS_SELECTOR, "form[action='/console/sign-out'] button").click()
    WebDriverWait(d, 10).until(EC.url_contains("/console/sign-in"))


def wait_text(d, css, needle, timeout=15):
    # A live region the page swaps while it is read leaves a stale element: read again.
    WebDriverWait(d, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: any(needle in e.text for e in d.find_elements(By.CSS_SELECTOR, css))
    )


def stable_text(d, element_id, tries=50):
    """The text of an element a live refresh may be swapping out: read again if it went stale."""
    for _ in range(tries):
        try:
            return d.find_element(By.ID, element_id).text
        except StaleElementReferenceException:
            time.sleep(0.1)
    return d.find_element(By.ID, element_id).text


def console_errors(d):
    """Errors the page logged (a CSP violation shows up here)."""
    try:
        return [e for e in d.get_log("browser") if e.get("level") == "SEVERE" and "favicon" not in e.get("message", "")]
    except Exception:
        return []


def ask(agent, task, action, target, params, confidence=0.96):
    token = svid(agent)
    api("POST", "/v1/tasks", token, {"id": task, "title": "console test", "trigger": {"source": "siem", "severity": "high"}})
    body = {"task": task, "action": action, "target": target, "confidence": confidence, "params": params,
            "rationale": "beacon to a known C2 <script>alert(1)</script>",
            "evidence": [{"kind": "edr", "ref": "det:ui-1", "summary": "<img src=x onerror=alert(2)>"},
                         {"kind": "idp", "ref": "risk:ui-2"}]}
    status, a = api("POST", "/v1/actions", token, body)
    assert status == 200 and a["state"] == "pending_approval", a
    return a["id"], a["decision"]["approval"]["id"]


print(f"console at {base}/console")
a1 = browser()
a2 = browser()
try:
    # 1. ana: a pending approval appears without a reload; approved by keyboard only; executed.
    sign_in(a1, ana)
    check("/console/inbox" in a1.current_url, "ana signs in with her API token and lands on the inbox")
    cookie = a1.get_cookie("warden_session")
    check(cookie["httpOnly"] and cookie["sameSite"] == "Strict", "the session cookie is HttpOnly and SameSite=Strict")
    check(not a1.execute_script("return document.cookie").count("warden_session"), "scripts cannot read the session")
    # The demo ends with a halt and a tripped breaker: an admin lifts them first.
    status, halts = api("GET", "/v1/halts", admin)
    for h in halts:
        if h["active"]:
            body = {"scope": h["halt"]["scope"], "reason": "console test"}
            if h["halt"].get("id"):
                body["id"] = h["halt"]["id"]
            status, r = api("POST", "/v1/resume", admin, body)
            assert status == 200, r
    for agent in (EDR, IAM):
        status, a = api("GET", "/v1/agents/" + urllib.parse.quote(agent, safe=""), admin)
        if a["status"] != "active":
            status, r = api("POST", "/v1/agents/" + urllib.parse.quote(agent, safe="") + "/resume", admin, {"reason": "console test"})
            assert status == 200, r
    status, _ = api("POST", "/v1/breakers/reset", admin, {"agent": EDR, "action": "host.isolate", "reason": "console test"})
    check(status == 200, "the demo's halt and tripped breaker are lifted")
    before = a1.execute_script("return performance.timeOrigin")
    request, approval = ask(EDR, "INC-UI-1", "host.isolate", "host:lt-cfo", {"reason": "C2 beacon"})
    WebDriverWait(a1, 15).until(EC.presence_of_element_located((By.ID, approval)))
    check(a1.execute_script("return performance.timeOrigin") == before, "the approval appeared without a reload")
    text = stable_text(a1, approval)
    check("lt-cfo" in text and "tier1" in text and "team:workplace" in text, "the card shows the target with its inventory facts")
    check("<script>alert(1)</script>" in text and "<img src=x onerror=alert(2)>" in text,
          "what the agent wrote is shown as text")
    card = a1.find_element(By.ID, approval)
    check(not card.find_elements(By.CSS_SELECTOR, "script, img"), "and nothing of it became markup")
    text = stable_text(a1, approval)
    check("agent/edr-responder/host.isolate" in text and "team:endpoint-response" in text,
          "the policy that decided and its owner are shown")
    a1.save_screenshot(f"{shots}/inbox.png")
    # Every form field has a label.
    unlabeled = a1.execute_script("""
        return [...document.querySelectorAll('input:not([type=hidden]), select')]
          .filter(i => !(i.labels && i.labels.length)).map(i => i.name || i.id);""")
    check(unlabeled == [], f"every field of the inbox has a label ({unlabeled})")
    # Keyboard only: from a freshly loaded page, Tab to the approve reason, type, Enter.
    a1.refresh()
    WebDriverWait(a1, 10).until(EC.presence_of_element_located((By.ID, approval)))
    target_id = f"approve-reason-{approval}"
    order = []
    for _ in range(80):
        webdriver.ActionChains(a1).send_keys(Keys.TAB).perform()
        el = a1.switch_to.active_element
        order.append(el.get_attribute("id") or el.get_attribute("href") or el.text)
        if el.get_attribute("id") == target_id:
            break
    check(order[-1] == target_id, f"Tab reaches the approve reason ({len(order)} presses)")
    check(order[0] and order[0].endswith("#main"), "the first Tab stop skips to the content")
    a1.switch_to.active_element.send_keys("confirmed C2 beacon", Keys.ENTER)
    wait_text(a1, ".notice", "Approved: the action ran.")
    check(True, "Enter on the reason approves (the form's submit)")
    host = lab_state()["edr"]["hosts"]["lt-cfo"]
    check(host["status"] == "contained", "the host is contained in the lab")
    check(not a1.find_elements(By.ID, approval), "the decided approval left the inbox")

    # The activity and action pages.
    a1.get(base + "/console/activity?agent=" + urllib.parse.quote(EDR))
    row = a1.find_element(By.CSS_SELECTOR, f"a[href='/console/actions/{request}']")
    check(row is not None, "the activity page lists the request, filtered by agent")
    a1.save_screenshot(f"{shots}/activity.png")
    row.click()
    WebDriverWait(a1, 10).until(EC.url_contains(request))
    wait_text(a1, "[data-live=action-state]", "succeeded")
    body = a1.find_element(By.TAG_NAME, "main").text
    check("Escalation path" in body and "Approval" in body and "Execution" in body, "the explain chain is shown")
    check("✓ included" in body, "audit entries show their proof status")
    a1.save_screenshot(f"{shots}/action.png")
    sign_out(a1)
    a1.get(base + "/console/inbox")
    check("/console/sign-in" in a1.current_url, "after sign-out the console asks to sign in again")

    # 2. quorum: iris approves, ines sees 1 of 2 without a reload, then approves.
    iris, ines = user("iris", "iam-owner"), user("ines", "iam-owner")
    sign_in(a1, iris)
    sign_in(a2, ines)
    request2, approval2 = ask(IAM, "INC-UI-2", "account.disable", "account:adm-asmith", {"reason": "token theft"})
    for d in (a1, a2):
        WebDriverWait(d, 15).until(EC.presence_of_element_located((By.ID, approval2)))
    wait_text(a2, f"[data-quorum='{approval2}']", "0 of 2")
    before = a2.execute_script("return performance.timeOrigin")
    a1.find_element(By.ID, f"approve-reason-{approval2}").send_keys("token theft confirmed")
    a1.find_element(By.CSS_SELECTOR, f"form[action='/console/approvals/{approval2}/approve'] button").click()
    wait_text(a1, ".notice", "Your approval is recorded.")
    wait_text(a2, f"[data-quorum='{approval2}']", "1 of 2")
    check(a2.execute_script("return performance.timeOrigin") == before, "the second owner sees 1 of 2 without a reload")
    check("You cannot approve" in stable_text(a1, approval2), "the first owner is not offered a second vote")
    a2.find_element(By.ID, f"approve-reason-{approval2}").send_keys("agreed")
    a2.find_element(By.CSS_SELECTOR, f"form[action='/console/approvals/{approval2}/approve'] button").click()
    wait_text(a2, ".notice", "Approved: the action ran.")
    check(lab_state()["idp"]["users"]["adm-asmith"]["status"] == "DEPROVISIONED", "quorum reached: the account is disabled in the lab")
    sign_out(a1)

    # 3. the emergency stop, by the incident commander; the banner reaches the other page live.
    sign_in(a1, olga)
    a1.get(base + "/console/agents")
    a1.save_screenshot(f"{shots}/agents.png")
    check(not a2.find_elements(By.CSS_SELECTOR, ".banner"), "no halt yet")
    a1.find_element(By.CSS_SELECTOR, "details.estop summary").click()
    button = a1.find_element(By.ID, "estop-button")
    check(not button.is_enabled(), "the stop button waits for the confirmation")
    a1.find_element(By.ID, "estop-reason").send_keys("ransomware spreading")
    a1.find_element(By.ID, "estop-confirm").click()
    button.click()
    wait_text(a1, ".banner", "Emergency stop in force")
    check(True, "the incident commander's page shows the banner")
    wait_text(a2, ".banner", "ransomware spreading")
    check(True, "the other analyst's page shows it without a reload")
    a1.save_screenshot(f"{shots}/agents-halted.png")
    status, halts = api("GET", "/v1/halts", admin)
    check(any(h["active"] and h["halt"]["scope"] == "all" for h in halts), "the halt is in force on the server")
    errors = console_errors(a1) + console_errors(a2)
    check(errors == [], f"no errors in the browser console (CSP, scripts): {errors}")
    sign_out(a1)

    # 4. the Reports page, then the standalone HTML reports.
    sign_in(a1, ana)
    a1.get(base + "/console/reports?since=all")
    wait_text(a1, "h1", "Reports")
    page = a1.find_element(By.ID, "main").text
    check(EDR + " × host.isolate" in page, "ana's report shows the EDR responder she approves for")
    check("network-guard" not in page, "and not the network guard, whose approvers are network engineers")
    check("demote" in page, "the runaway EDR agent is proposed a level lower")
    svgs = a1.find_elements(By.CSS_SELECTOR, "#autonomy svg")
    check(len(svgs) >= 3, f"the outcome mix over time, the outcome bars and calibration are drawn ({len(svgs)} charts)")
    check(a1.find_element(By.CSS_SELECTOR, "svg[aria-label='outcome mix over time']").size["width"] > 0, "the timeline is visible")
    check("AML.M0029" in page and "gap: no feature" in page, "the controls, gaps named")
    a1.save_screenshot(f"{shots}/reports.png")
    errors = console_errors(a1)
    check(errors == [], f"no errors on the Reports page (CSP): {errors}")
    for path in html_reports:
        a1.get("file://" + path)
        name = path.rsplit("/", 1)[-1].removesuffix(".html")
        title = a1.title
        check(title.startswith("Warden — "), f"{name}: the report opens ({title})")
        check(a1.find_elements(By.CSS_SELECTOR, "svg"), f"{name}: its charts are drawn")
        resources = a1.execute_script("return performance.getEntriesByType('resource').length")
        check(resources == 0, f"{name}: nothing is fetched ({resources} resources)")
        a1.set_window_size(1280, 2000)
        a1.save_screenshot(f"{shots}/{name}.png")
finally:
    a1.quit()
    a2.quit()
print(f"console: {checks} checks passed in Chromium; screenshots in {shots}/")
