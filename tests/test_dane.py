"""DANE for outbound TLS (RFC 7672) end to end: a loopback authoritative
DNS serving a root zone signed in the test (its key is mailgate's
`[dns] trust_anchor`, replacing the built-in root KSK), loopback SMTP
sinks with chosen certificates, and the real binary relaying to them.

mailgate's validating resolver asks only `[dns] nameservers`, the test's
server: no query can reach a root server.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dnssec_dns import DnssecServer, SignedWorld, wait_for
from helpers import queue_id


# -- certificates -----------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(dns_name: str, issuer=None, ca: bool = False):
    """(certificate, key): self-signed, or signed by `issuer` (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(_name(dns_name))
         .issuer_name(issuer[0].subject if issuer else _name(dns_name))
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(days=1))
         .not_valid_after(now + datetime.timedelta(days=30)))
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                          crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
    else:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
    cert = b.sign(issuer[1] if issuer else key, hashes.SHA256())
    return cert, key


def der(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def spki_sha256(cert) -> str:
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


# -- a loopback SMTP sink with STARTTLS -------------------------------------

class TlsSink:
    """Accepts mail on ip:port; offers STARTTLS with `chain` (list of
    certs, leaf first) and `key` unless `starttls` is False."""

    def __init__(self, ip: str, port: int, workdir, chain=None, key=None, starttls: bool = True):
        self.messages: list[dict] = []
        self.connections = 0
        self.ctx = None
        if starttls:
            certfile, keyfile = workdir / f"sink-{ip}.pem", workdir / f"sink-{ip}.key"
            certfile.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
            keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(certfile, keyfile)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, port))
        self.sock.listen(16)
        self.stopped = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn):
        conn.settimeout(20)
        f = conn.makefile("rb")
        tls = False

        def send(line: str):
            conn.sendall(line.encode() + b"\r\n")

        try:
            send("220 sink.test ESMTP")
            mail = {"rcpts": []}
            while True:
                line = f.readline()
                if not line:
                    return
                cmd = line.decode(errors="replace").strip()
                verb = cmd.split(" ", 1)[0].upper()
                if verb in ("EHLO", "HELO"):
                    if self.ctx is not None and not tls:
                        send("250-sink.test")
                        send("250 STARTTLS")
                    else:
                        send("250 sink.test")
                elif verb == "STARTTLS" and self.ctx is not None and not tls:
                    send("220 go ahead")
                    try:
                        conn = self.ctx.wrap_socket(conn, server_side=True)
                    except (ssl.SSLError, OSError):
                        return
                    f = conn.makefile("rb")
                    tls = True
                elif verb == "MAIL":
                    mail = {"rcpts": [], "from": cmd, "tls": tls}
                    send("250 ok")
                elif verb == "RCPT":
                    mail["rcpts"].append(cmd)
                    send("250 ok")
                elif verb == "DATA":
                    send("354 go")
                    body = b""
                    while True:
                        l2 = f.readline()
                        if not l2 or l2 == b".\r\n":
                            break
                        body += l2
                    mail["body"] = body
                    self.messages.append(mail)
                    send("250 queued")
                elif verb == "RSET":
                    send("250 ok")
                elif verb == "QUIT":
                    send("221 bye")
                    return
                else:
                    send("502 no")
        except (OSError, ssl.SSLError):
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def stop(self):
        self.stopped = True
        self.sock.close()


# -- the world --------------------------------------------------------------

class World:
    """The DNS, the sinks and the server of one test; made by `_world`."""

    def __init__(self, srv, dns_server, signed, port):
        self.srv, self.dns, self.signed, self.port = srv, dns_server, signed, port
        self.sinks: list[TlsSink] = []

    def sink(self, ip, **kw) -> TlsSink:
        s = TlsSink(ip, self.port, self.srv.workdir, **kw)
        self.sinks.append(s)
        return s

    def send(self, rcpt: str) -> str:
        with self.srv.smtp() as d:
            d.ehlo()
            assert d.cmd("MAIL FROM:<app@example.test>").code == 250
            r = d.cmd(f"RCPT TO:<{rcpt}>")
            assert r.code == 250, r
            assert d.cmd("DATA").code == 354
            d.send(b"Subject: dane\r\n\r\nhello\r\n.\r\n")
            return queue_id(d.read_reply())

    def deferred(self, qid: str) -> dict | None:
        """The recipient once an attempt has failed."""
        def check():
            try:
                m = self.srv.queue_show(qid)
            except AssertionError:
                return None
            rcpts = m.get("recipients") or []
            return next((r for r in rcpts if (r.get("attempts") or 0) >= 1 and r.get("status") == "deferred"), None)
        return wait_for(check, 20)

    def tlsrpt(self, domain: str, want) -> dict | None:
        """The TLS-RPT report the domain would get, once `want(report)`."""
        def check():
            status, text = self.srv.http_get(f"/api/v1/reports/preview/{domain}")
            if status != 200:
                return None
            body = json.loads(text).get("tlsrpt")
            if not body:
                return None
            report = json.loads(body)
            return report if want(report) else None
        return wait_for(check, 20, 0.25)

    def stop(self):
        for s in self.sinks:
            s.stop()
        self.dns.stop()


def policies(report, kind):
    return [p for p in report.get("policies", []) if p["policy"]["policy-type"] == kind]


def failures(report, kind):
    return [d["result-type"] for p in policies(report, kind) for d in p.get("failure-details", [])]


def zone_for(domain: str, ip: str, port: int, tlsa: list[str]) -> str:
    lines = f"{domain}. 3600 IN MX 10 mx.{domain}.\nmx.{domain}. 3600 IN A {ip}\n"
    for t in tlsa:
        lines += f"_{port}._tcp.mx.{domain}. 3600 IN TLSA {t}\n"
    return lines


# -- tests ------------------------------------------------------------------

@pytest.mark.parametrize("anchor_kind", ["DNSKEY", "DS"])
def test_matching_dane_ee_3_1_1_delivers_over_tls_and_reports_tlsa_success(mailgate_factory, tmp_path, anchor_kind):
    cert, key = make_cert("mx.good.test")
    w = _world(mailgate_factory, tmp_path, lambda port: zone_for("good.test", "127.0.2.1", port, [f"3 1 1 {spki_sha256(cert)}"]),
               anchor_kind=anchor_kind)
    try:
        sink = w.sink("127.0.2.1", chain=[cert], key=key)
        w.srv.start()
        w.send("bob@good.test")
        assert wait_for(lambda: sink.messages, 20), w.srv.log_text()[-3000:]
        assert sink.messages[0]["tls"] is True
        report = w.tlsrpt("good.test", lambda r: policies(r, "tlsa"))
        assert report, w.srv.log_text()[-3000:]
        (p,) = policies(report, "tlsa")
        assert p["summary"]["total-successful-session-count"] >= 1, p
        assert any("TLSA 3 1 1" in line for line in p["policy"]["policy-string"]), p
        # The TLSA name carries the port connected to, and every query
        # went to the test's server.
        assert (f"_{w.port}._tcp.mx.good.test.", "TLSA") in w.dns.queries
    finally:
        w.stop()


def _world(factory, tmp_path, zone_of_port, **kw) -> World:
    """A World whose zone needs the delivery port: the server (and so the
    port) is made first, then the zone is signed and served."""
    srv = factory("dane", relay={"trusted_networks": ["127.0.0.0/8"]})
    port = srv.mx_delivery_port
    records = zone_of_port(port)
    children = kw.pop("children", None)
    signed = SignedWorld(records, children=children(port) if children else None, corrupt=kw.pop("corrupt", None))
    w = World(srv, DnssecServer(signed, ad=kw.pop("ad", False)), signed, port)
    mode = kw.pop("mode", "validate")
    anchor = kw.pop("anchor", None)
    anchor_file = tmp_path / "anchor.key"
    anchor_file.write_text(anchor if anchor is not None else signed.anchor_text(kw.pop("anchor_kind", "DNSKEY")))
    dns_extra = f'dnssec = "{mode}"\n' + (f'trust_anchor = "{anchor_file}"\n' if mode == "validate" else "")
    text = srv.config_path.read_text()
    # The server was made with the shared empty DNS: point it at ours.
    text = text.replace(f"127.0.0.1:{srv.dns_port}", f"127.0.0.1:{w.dns.port}")
    srv.dns_port = w.dns.port
    text = text.replace("[dns]\n", "[dns]\n" + dns_extra, 1)
    text = text.replace("[delivery]\n", "[delivery]\nretry_initial = 1\nretry_max = 2\nconnect_timeout = 3\ncommand_timeout = 10\n", 1)
    srv.config_path.write_text(text)
    return w


def test_mismatching_tlsa_defers_with_tlsa_invalid(mailgate_factory, tmp_path):
    cert, key = make_cert("mx.bad.test")
    other, _ = make_cert("mx.bad.test")
    w = _world(mailgate_factory, tmp_path, lambda port: zone_for("bad.test", "127.0.2.2", port, [f"3 1 1 {spki_sha256(other)}"]))
    try:
        sink = w.sink("127.0.2.2", chain=[cert], key=key)
        w.srv.start()
        qid = w.send("bob@bad.test")
        r = w.deferred(qid)
        assert r, w.srv.log_text()[-3000:]
        assert "TLS" in str(r.get("last_reply")), r
        assert not sink.messages
        report = w.tlsrpt("bad.test", lambda rep: "tlsa-invalid" in failures(rep, "tlsa"))
        assert report, w.srv.log_text()[-3000:]
    finally:
        w.stop()


def test_bogus_signature_defers_with_dnssec_invalid_and_never_connects(mailgate_factory, tmp_path):
    cert, key = make_cert("mx.bogus.test")
    w = _world(mailgate_factory, tmp_path,
               lambda port: zone_for("bogus.test", "127.0.2.3", port, [f"3 1 1 {spki_sha256(cert)}"]),
               corrupt=("bogus.test.", "MX"))
    try:
        sink = w.sink("127.0.2.3", chain=[cert], key=key)
        w.srv.start()
        qid = w.send("bob@bogus.test")
        r = w.deferred(qid)
        assert r, w.srv.log_text()[-3000:]
        assert "DNSSEC" in str(r.get("last_reply")), r
        assert sink.connections == 0
        assert w.tlsrpt("bogus.test", lambda rep: "dnssec-invalid" in failures(rep, "tlsa")), w.srv.log_text()[-3000:]
    finally:
        w.stop()


def test_unsigned_zone_ignores_its_tlsa_and_delivers_opportunistically(mailgate_factory, tmp_path):
    cert, key = make_cert("mx.plain.test")
    other, _ = make_cert("mx.plain.test")

    # plain.test is delegated from the signed root without a DS record
    # (a secure NSEC proves it): its mismatching TLSA must not count.
    w = _world(mailgate_factory, tmp_path, lambda port: "",
               children=lambda port: {"plain.test.": zone_for("plain.test", "127.0.2.4", port, [f"3 1 1 {spki_sha256(other)}"])})
    try:
        sink = w.sink("127.0.2.4", chain=[cert], key=key)
        w.srv.start()
        w.send("bob@plain.test")
        assert wait_for(lambda: sink.messages, 20), w.srv.log_text()[-3000:]
        assert sink.messages[0]["tls"] is True
        report = w.tlsrpt("plain.test", lambda r: r.get("policies"))
        assert report and not policies(report, "tlsa"), report
    finally:
        w.stop()


def test_dane_ta_2_0_1_with_a_chain_delivers(mailgate_factory, tmp_path):
    ca, ca_key = make_cert("Test DANE CA", ca=True)
    leaf, leaf_key = make_cert("mx.chain.test", issuer=(ca, ca_key))
    ta = hashlib.sha256(der(ca)).hexdigest()
    w = _world(mailgate_factory, tmp_path, lambda port: zone_for("chain.test", "127.0.2.5", port, [f"2 0 1 {ta}"]))
    try:
        sink = w.sink("127.0.2.5", chain=[leaf, ca], key=leaf_key)
        w.srv.start()
        w.send("bob@chain.test")
        assert wait_for(lambda: sink.messages, 20), w.srv.log_text()[-3000:]
        assert sink.messages[0]["tls"] is True
    finally:
        w.stop()


def test_dane_ta_rejects_a_leaf_for_another_name(mailgate_factory, tmp_path):
    ca, ca_key = make_cert("Test DANE CA", ca=True)
    leaf, leaf_key = make_cert("elsewhere.example", issuer=(ca, ca_key))
    ta = hashlib.sha256(der(ca)).hexdigest()
    w = _world(mailgate_factory, tmp_path, lambda port: zone_for("chain2.test", "127.0.2.6", port, [f"2 0 1 {ta}"]))
    try:
        sink = w.sink("127.0.2.6", chain=[leaf, ca], key=leaf_key)
        w.srv.start()
        qid = w.send("bob@chain2.test")
        assert w.deferred(qid), w.srv.log_text()[-3000:]
        assert not sink.messages
    finally:
        w.stop()


def test_receiver_without_starttls_defers_when_tlsa_exists(mailgate_factory, tmp_path):
    cert, _ = make_cert("mx.nostls.test")
    w = _world(mailgate_factory, tmp_path, lambda port: zone_for("nostls.test", "127.0.2.7", port, [f"3 1 1 {spki_sha256(cert)}"]))
    try:
        sink = w.sink("127.0.2.7", starttls=False)
        w.srv.start()
        qid = w.send("bob@nostls.test")
        assert w.deferred(qid), w.srv.log_text()[-3000:]
        assert not sink.messages
        assert w.tlsrpt("nostls.test", lambda r: "starttls-not-supported" in failures(r, "tlsa")), w.srv.log_text()[-3000:]
    finally:
        w.stop()


def test_trust_ad_believes_the_resolvers_ad_bit(mailgate_factory, tmp_path):
    cert, key = make_cert("mx.ad.test")
    other, _ = make_cert("mx.ad.test")
    w = _world(mailgate_factory, tmp_path, lambda port: zone_for("ad.test", "127.0.2.8", port, [f"3 1 1 {spki_sha256(other)}"]),
               mode="trust-ad", ad=True)
    try:
        sink = w.sink("127.0.2.8", chain=[cert], key=key)
        w.srv.start()
        qid = w.send("bob@ad.test")
        # The AD bit makes the (mismatching) TLSA binding: no delivery.
        assert w.deferred(qid), w.srv.log_text()[-3000:]
        assert not sink.messages
        assert w.tlsrpt("ad.test", lambda r: "tlsa-invalid" in failures(r, "tlsa"))
    finally:
        w.stop()


def test_validate_refuses_to_start_when_the_trust_anchor_does_not_validate(mailgate_factory, tmp_path):
    stranger = SignedWorld("")
    w = _world(mailgate_factory, tmp_path, lambda port: "", anchor=stranger.anchor_text())
    try:
        with pytest.raises(RuntimeError) as e:
            w.srv.start()
        assert "DNSSEC self-test failed" in str(e.value), str(e.value)[-2000:]
    finally:
        w.stop()


def test_records_prints_tlsa_3_1_1_for_our_certificate(mailgate_factory):
    srv = mailgate_factory("rec").start()
    srv.stop()
    out = srv.cli("records").stdout
    pem = (srv.data_dir / "tls" / "cert.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    want = f"_25._tcp.{srv.hostname}. 3600 IN TLSA 3 1 1 {spki_sha256(cert)}"
    assert want in out, out
    assert "before" in out.lower() and "certificate" in out.lower(), out


def test_only_pkix_records_make_tls_mandatory_but_unauthenticated(mailgate_factory, tmp_path):
    cert, key = make_cert("mx.pkix.test")
    other, _ = make_cert("mx.pkix.test")
    # PKIX-EE (1) cannot authenticate under RFC 7672 §3.1.3: the mismatch
    # does not matter, but TLS is still required.
    w = _world(mailgate_factory, tmp_path, lambda port: zone_for("pkix.test", "127.0.2.9", port, [f"1 1 1 {spki_sha256(other)}"]))
    try:
        sink = w.sink("127.0.2.9", chain=[cert], key=key)
        w.srv.start()
        w.send("bob@pkix.test")
        assert wait_for(lambda: sink.messages, 20), w.srv.log_text()[-3000:]
        assert sink.messages[0]["tls"] is True
    finally:
        w.stop()
