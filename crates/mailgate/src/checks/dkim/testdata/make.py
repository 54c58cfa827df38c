#!/usr/bin/env python3
"""Regenerates the dkimpy-signed fixtures for checks/dkim tests: signatures
mailgate's own signer cannot make (rsa-sha1, l=). Needs dkimpy and openssl.
Writes a fresh RSA-2048 key each time; only the public record is kept.

    cd crates/mailgate/src/checks/dkim/testdata && python3 make.py
"""
import base64, subprocess, dkim

DOMAIN = b"fixture.test"
subprocess.run(["openssl", "genrsa", "-traditional", "-out", "key.pem", "2048"], check=True, capture_output=True)
key = open("key.pem", "rb").read()
der = subprocess.run(["openssl", "rsa", "-in", "key.pem", "-pubout", "-outform", "DER"], check=True, capture_output=True).stdout
records = "".join(f"{s}._domainkey.fixture.test v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}\n" for s in ("sha1", "len", "ctl"))
open("records.txt", "w").write(records)

msg = (b"From: Alice <alice@fixture.test>\r\nTo: bob@far.test\r\nSubject: fixture\r\n"
       b"Date: Mon, 23 Nov 2026 12:00:00 +0000\r\nMessage-ID: <fixture-1@fixture.test>\r\n\r\n"
       b"Hello Bob,\r\n\r\nthis is the signed body.\r\n")
H = [b"from", b"to", b"subject", b"date", b"message-id"]

def sign(sel, alg, length=False):
    return dkim.sign(msg, sel, DOMAIN, key, signature_algorithm=alg, include_headers=H,
                     canonicalize=(b"relaxed", b"relaxed"), length=length) + msg

open("sha1.eml", "wb").write(sign(b"sha1", b"rsa-sha1"))
open("control.eml", "wb").write(sign(b"ctl", b"rsa-sha256"))
open("length-exact.eml", "wb").write(sign(b"len", b"rsa-sha256", length=True))
open("length-tail.eml", "wb").write(sign(b"len", b"rsa-sha256", length=True) + b"\r\nP.S. Wire the money to the new account: evil.test\r\n")
import os; os.remove("key.pem")
