"""The dashboard's defences, over plain HTTP against the real binary:

- a message whose From display name, Subject and Message-ID carry
  `<script>` and `"><img onerror=...>` appears escaped on every page that
  shows it, and on none as markup;
- without a session or the token, pages redirect to /login and the API and
  the JSON twins answer 401;
- a POST without the CSRF token is refused (login, log out, Retry, Delete,
  the API from a browser session);
- the cookies are HttpOnly and SameSite=Strict, and Secure under TLS.
"""

from __future__ import annotations

import html
import re

import pytest

pytest.importorskip("dkim", reason="pip install dkimpy")
pytest.importorskip("dnslib", reason="pip install dnslib")

from dashboard_env import IMG, NONE, OURS, PASSWORD, SCRIPT, Http, start  # noqa: E402

PAGES = ["/", "/queue", "/messages", "/messages?q=eve%40none.test", f"/domains/{OURS}", "/tls"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e, stop = start(tmp_path_factory.mktemp("dashboard-security"))
    yield e
    stop()


def logged_in(env) -> Http:
    h = Http(env.srv.http_port)
    assert h.login() == 303
    return h


def hostile_id(env, h: Http) -> str:
    def find():
        status, _, body = h.request("GET", "/messages?q=eve%40none.test")
        m = re.search(r'href="/messages/([^"]+)"', body)
        return m.group(1) if status == 200 and m else None
    return env.wait(find, "the hostile message to be recorded")


def test_hostile_header_fields_are_escaped_everywhere(env):
    h = logged_in(env)
    qid = hostile_id(env, h)
    for path in PAGES + [f"/messages/{qid}"]:
        status, _, body = h.request("GET", path)
        assert status == 200, (path, body[:500])
        assert "<script" not in body.lower(), path
        assert "<img" not in body.lower() and "onerror=alert" not in body.replace("onerror=alert(2)&gt;", ""), path
    _, _, page = h.request("GET", f"/messages/{qid}")
    # Shown, as text: escaped once, by the template engine.
    assert html.escape(SCRIPT, quote=False) in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    assert f"eve@{NONE}" in page
    # The JSON twin carries the text as it came, for scripts to escape.
    _, headers, body = h.request("GET", f"/messages/{qid}?format=json")
    assert headers["Content-Type"].startswith("application/json")
    assert SCRIPT in body
    assert IMG.replace('"', '\\"') in body


def test_without_session_or_token(env):
    h = Http(env.srv.http_port)
    for path in PAGES:
        status, headers, _ = h.request("GET", path)
        assert status == 303 and headers["Location"].startswith("/login?next="), (path, status)
        sep = "&" if "?" in path else "?"
        status, _, _ = h.request("GET", path + sep + "format=json")
        assert status == 401, path
    assert h.request("GET", "/api/v1/queue")[0] == 401
    assert h.request("POST", "/messages/r-0000000000000000/delete", {"csrf": "x"})[0] in (303, 401)
    # A wrong cookie is no session.
    h.cookies["mailgate_session"] = "forged"
    assert h.request("GET", "/")[0] == 303
    assert h.request("GET", "/?format=json")[0] == 401
    # The bearer token opens pages and their twins, as it does the API.
    token = {"Authorization": f"Bearer {env.srv.admin_token()}"}
    h2 = Http(env.srv.http_port)
    assert h2.request("GET", "/", headers=token)[0] == 200
    assert h2.request("GET", "/?format=json", headers=token)[0] == 200


def test_session_opens_the_api(env):
    h = logged_in(env)
    status, _, body = h.request("GET", "/api/v1/queue")
    assert status == 200 and '"messages"' in body


def test_posts_without_csrf_are_refused(env):
    # Login: without the form's token, or with a token not matching the cookie.
    h = Http(env.srv.http_port)
    assert h.request("POST", "/login", {"password": PASSWORD})[0] == 403
    h.request("GET", "/login")
    assert h.request("POST", "/login", {"password": PASSWORD, "csrf": "guessed"})[0] == 403
    assert "mailgate_session" not in h.cookies

    h = logged_in(env)
    queued = env.api("/api/v1/queue")["messages"]
    assert queued, "the deferred message should be queued"
    qid = queued[0]["id"]
    for action in ("retry", "delete"):
        assert h.request("POST", f"/messages/{qid}/{action}", {})[0] == 403
        assert h.request("POST", f"/messages/{qid}/{action}", {"csrf": "wrong"})[0] == 403
    assert qid in {m["id"] for m in env.api("/api/v1/queue")["messages"]}
    # The API from a browser session needs the token in a header.
    assert h.request("POST", f"/api/v1/queue/{qid}/retry")[0] == 403
    csrf = h.csrf(f"/messages/{qid}")
    assert h.request("POST", f"/api/v1/queue/{qid}/retry", headers={"X-CSRF-Token": csrf})[0] == 200
    # Log out needs it too; with it, the session ends.
    assert h.request("POST", "/logout", {})[0] == 403
    assert h.request("GET", "/")[0] == 200
    assert h.request("POST", "/logout", {"csrf": csrf})[0] == 303
    assert h.request("GET", "/")[0] == 303


def test_cookie_flags(env):
    h = Http(env.srv.http_port)
    _, headers, _ = h.request("GET", "/login")
    login_cookie = headers["Set-Cookie"]
    assert "HttpOnly" in login_cookie and "SameSite=Strict" in login_cookie and "Secure" not in login_cookie
    csrf = re.search(r'name="csrf" value="([^"]+)"', h.request("GET", "/login")[2]).group(1)
    status, headers, _ = h.request("POST", "/login", {"password": PASSWORD, "csrf": csrf})
    assert status == 303
    session = [c for c in headers.get_all("Set-Cookie") if c.startswith("mailgate_session=")]
    assert session and "HttpOnly" in session[0] and "SameSite=Strict" in session[0], session
    # Wrong passwords count towards the throttle like wrong tokens.
    bad = Http(env.srv.http_port)
    csrf = re.search(r'name="csrf" value="([^"]+)"', bad.request("GET", "/login")[2]).group(1)
    assert bad.request("POST", "/login", {"password": "nope", "csrf": csrf})[0] == 401


def test_cookies_are_secure_under_tls(mailgate_factory):
    import http.client
    import ssl
    srv = mailgate_factory("tls", http_tls=True).start()
    ctx = ssl.create_default_context(cafile=str(srv.data_dir / "tls" / "cert.pem"))
    ctx.check_hostname = False
    c = http.client.HTTPSConnection("127.0.0.1", srv.http_port, context=ctx, timeout=10)
    c.request("GET", "/login")
    r = c.getresponse()
    r.read()
    assert r.status == 200
    assert "Secure" in r.headers["Set-Cookie"] and "HttpOnly" in r.headers["Set-Cookie"]
