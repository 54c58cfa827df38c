"""The locked-down admin API: bearer token, per-address throttle, HTTPS,
refusal of a clear-text non-loopback bind; and the paged queue (API and
CLI) with deletion by filter. Real binary, real TCP on loopback."""

import http.client
import json
import os
import smtplib
import stat
import subprocess
import threading
import time

import pytest

from helpers import queue_id

OTHER_DOMAIN = (
    '[[domain]]\nname = "other.test"\ndkim = false\ndeliver = "smtp://127.0.0.1:9"\n'
)


def request(server, path, token=None, source="127.0.0.1", method="GET", body=None):
    """One HTTP request from `source` (a loopback address of our choice);
    returns (status, headers, body)."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", server.http_port, timeout=10, source_address=(source, 0)
    )
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        headers["Content-Type"] = "application/json"
        body = json.dumps(body)
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read().decode()
    finally:
        conn.close()


def inject(server, messages):
    """Sends (sender, recipient) pairs over SMTP; returns their queue ids."""
    ids = []
    with smtplib.SMTP("127.0.0.1", server.mx_port, timeout=30) as s:
        s.ehlo("client.test")
        for sender, rcpt in messages:
            s.mail(sender)
            code, _ = s.rcpt(rcpt)
            assert code == 250, (code, rcpt)
            code, text = s.data(b"Subject: q\r\n\r\nhello\r\n")
            assert code == 250, (code, text)
            ids.append(queue_id(text.decode()))
    return ids


def inject_parallel(server, n, connections=4):
    """n messages from bulk@sender.test over several connections."""
    errors = []

    def worker(count):
        try:
            inject(server, [("bulk@sender.test", "r@example.test")] * count)
        except Exception as e:  # reported below
            errors.append(e)

    per = [n // connections + (1 if i < n % connections else 0) for i in range(connections)]
    threads = [threading.Thread(target=worker, args=(c,)) for c in per]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


# -- token -------------------------------------------------------------


def test_token_file_is_0600_one_line_and_kept_across_restart(server):
    path = server.data_dir / "admin.token"
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    text = path.read_text()
    assert text.endswith("\n") and text.count("\n") == 1, repr(text)
    token = text.strip()
    # At least 128 bits, URL-safe text.
    assert len(token) >= 22, token
    assert all(c.isalnum() or c in "-_" for c in token), token
    server.stop()
    server.start()
    assert path.read_text().strip() == token
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    status, _, _ = request(server, "/api/v1/queue", token=token)
    assert status == 200


def test_token_file_readable_by_others_stops_the_start(server):
    path = server.data_dir / "admin.token"
    server.stop()
    os.chmod(path, 0o644)
    with pytest.raises(RuntimeError) as failed:
        server.start()
    assert "admin.token" in str(failed.value) and "chmod 600" in str(failed.value)


def test_missing_or_wrong_token_gets_401_and_is_logged(server):
    status, headers, _ = request(server, "/api/v1/queue")
    assert status == 401
    assert headers.get("www-authenticate", "").startswith("Bearer"), headers
    status, headers, _ = request(server, "/api/v1/queue", token="not-the-token-at-all-0123456789")
    assert status == 401
    assert headers.get("www-authenticate", "").startswith("Bearer"), headers
    # Every route but the two public ones, whatever the method.
    for method, path in [("GET", "/api/v1/spool"), ("DELETE", "/api/v1/queue/0661F17B806DFC00678A"), ("GET", "/nowhere")]:
        status, _, _ = request(server, path, method=method, source="127.0.0.3")
        assert status == 401, (method, path, status)
    status, _, body = request(server, "/api/v1/queue", token=server.admin_token())
    assert status == 200, body
    assert json.loads(body) == {"messages": [], "next": None}
    time.sleep(0.2)
    failures = [l for l in server.log_text().splitlines() if "authentication failed" in l]
    assert any("127.0.0.1" in l and "no token" in l for l in failures), failures
    assert any("127.0.0.1" in l and "wrong token" in l for l in failures), failures


def test_healthz_and_metrics_need_no_token(server):
    for path in ("/healthz", "/metrics"):
        status, _, _ = request(server, path)
        assert status == 200, path


def test_repeated_failures_throttle_that_address_only(server):
    token = server.admin_token()
    attacker = "127.0.0.2"
    statuses = [request(server, "/api/v1/queue", token=f"guess-{i:030d}", source=attacker)[0] for i in range(6)]
    assert statuses[:4] == [401] * 4, statuses
    assert statuses[4:] == [429, 429], statuses
    # Now even the right token is refused from there...
    status, headers, _ = request(server, "/api/v1/queue", token=token, source=attacker)
    assert status == 429
    assert int(headers.get("retry-after", "0")) > 0, headers
    # ...while another address is unaffected, with the right token or a wrong one.
    assert request(server, "/api/v1/queue", token=token, source="127.0.0.1")[0] == 200
    assert request(server, "/api/v1/queue", token="wrong-" + "x" * 30, source="127.0.0.1")[0] == 401
    assert request(server, "/api/v1/queue", token=token, source="127.0.0.1")[0] == 200
    # The CLI (from 127.0.0.1) still works too.
    assert server.queue_list() == []


# -- HTTPS and binding ------------------------------------------------------


def test_https_admin_api_with_cli_trusting_the_certificate(mailgate_factory, tmp_path):
    srv = mailgate_factory("tls", http_tls=True).start()  # probes /healthz over https
    status, body = srv.http_get("/api/v1/queue")
    assert status == 200, body
    # Clear-text HTTP on the port gets no answer.
    with pytest.raises((http.client.HTTPException, OSError)):
        request(srv, "/healthz")
    # The CLI speaks HTTPS and trusts the generated certificate.
    with smtplib.SMTP("127.0.0.1", srv.mx_port) as s:
        s.sendmail("a@sender.test", ["b@example.test"], b"Subject: t\r\n\r\nhi\r\n")
    assert len(srv.queue_list()) == 1
    # Pinned to the configured certificate: a CLI configured with another
    # certificate refuses to talk to this server.
    other_cert, other_key = tmp_path / "other.pem", tmp_path / "other.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-subj", "/CN=mx.example.test", "-days", "2", "-keyout", str(other_key), "-out", str(other_cert)],
        check=True, capture_output=True,
    )
    cli_config = tmp_path / "cli.toml"
    cli_config.write_text(
        srv.config_path.read_text() + f'\n[tls]\ncert = "{other_cert}"\nkey = "{other_key}"\n'
    )
    p = subprocess.run(
        [str(srv.binary), "--config", str(cli_config), "queue", "list"], capture_output=True, text=True, timeout=30
    )
    assert p.returncode != 0, p
    assert "certificate" in p.stderr, p.stderr


def test_non_loopback_bind_without_tls_refuses_to_start(mailgate_bin, tmp_path):
    config = tmp_path / "m.toml"
    config.write_text(
        f'[server]\nhostname = "mx.example.test"\ndata_dir = "{tmp_path / "data"}"\n'
        '[[listener]]\nrole = "mx"\nbind = "127.0.0.1:0"\n'
        '[http]\nbind = "0.0.0.0:8025"\n'
    )
    p = subprocess.run(
        [str(mailgate_bin), "serve", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert p.returncode != 0, p
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "[http] bind" in lines[0] and "[http] tls" in lines[0], lines[0]


# -- paging and filters -----------------------------------------------------


def test_queue_pages_with_limit_after_and_next(server):
    ids = inject(server, [(f"s{i}@sender.test", "r@example.test") for i in range(7)])
    assert ids == sorted(ids)
    seen, after, pages = [], None, 0
    while True:
        path = "/api/v1/queue?limit=3" + (f"&after={after}" if after else "")
        status, body = server.http_get(path)
        assert status == 200, body
        doc = json.loads(body)
        assert set(doc) == {"messages", "next"}, doc
        page = [m["id"] for m in doc["messages"]]
        pages += 1
        assert len(page) <= 3
        seen += page
        if doc["next"] is None:
            break
        assert doc["next"] == page[-1]
        after = doc["next"]
    assert pages == 3
    assert seen == ids
    # Default page, and bad parameters.
    status, body = server.http_get("/api/v1/queue")
    assert [m["id"] for m in json.loads(body)["messages"]] == ids
    assert json.loads(body)["next"] is None
    assert server.http_get("/api/v1/queue?limit=0")[0] == 400
    assert server.http_get("/api/v1/queue?after=nonsense")[0] == 400
    assert server.http_get("/api/v1/queue?limit=x")[0] == 400


def test_cli_lists_every_page(server):
    n = 1005  # the CLI asks for 1000 per page
    inject_parallel(server, n)
    p = server.cli("queue", "list", "--json")
    doc = json.loads(p.stdout)  # exactly one JSON document
    assert list(doc) == ["messages"]
    ids = [m["id"] for m in doc["messages"]]
    assert len(ids) == n and len(set(ids)) == n
    assert ids == sorted(ids)
    p = server.cli("queue", "list")
    assert p.stdout.rstrip().endswith(f"{n} message(s)"), p.stdout[-200:]
    assert len(p.stdout.splitlines()) == n + 2


@pytest.mark.mailgate(extra_toml=OTHER_DOMAIN)
def test_delete_by_sender_and_by_recipient_domain(server):
    spam = inject(server, [("spam@bad.test", "r@example.test")] * 3)
    other = inject(server, [("ok@good.test", "r@other.test")] * 2)
    keep = inject(server, [("ok@good.test", "r@example.test")] * 2)
    assert server.queue_ids() == set(spam + other + keep)
    p = server.cli("queue", "delete", "--sender", "SPAM@bad.test")
    assert p.stdout.strip() == "deleted 3 message(s)", p.stdout
    assert server.queue_ids() == set(other + keep)
    p = server.cli("queue", "delete", "--recipient-domain", "other.test")
    assert p.stdout.strip() == "deleted 2 message(s)", p.stdout
    assert server.queue_ids() == set(keep)
    # Both filters must match; nothing does now.
    p = server.cli("queue", "delete", "--sender", "ok@good.test", "--recipient-domain", "other.test")
    assert p.stdout.strip() == "deleted 0 message(s)", p.stdout
    assert server.queue_ids() == set(keep)
    # The API's own answer, and an empty filter refused.
    status, _, body = request(
        server, "/api/v1/queue/delete", token=server.admin_token(), method="POST", body={"recipient_domain": "example.test"}
    )
    assert status == 200 and json.loads(body) == {"deleted": 2}, body
    status, _, _ = request(server, "/api/v1/queue/delete", token=server.admin_token(), method="POST", body={})
    assert status == 400
    assert server.queue_ids() == set()
    # The deletions are durable.
    server.stop()
    server.start()
    assert server.queue_ids() == set()


def test_cli_token_file_option(server, tmp_path):
    wrong = tmp_path / "wrong.token"
    wrong.write_text("x" * 43 + "\n")
    p = server.cli("--token-file", str(wrong), "queue", "list", check=False)
    assert p.returncode != 0
    assert "401" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    right = tmp_path / "right.token"
    right.write_text(server.admin_token() + "\n")
    p = server.cli("--token-file", str(right), "queue", "list", "--json")
    assert json.loads(p.stdout) == {"messages": []}
