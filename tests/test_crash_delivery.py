"""Crash test under load: mailgate is killed with SIGKILL again and again
while it receives and relays mail, and restarted on the same data dir.
Every message it acknowledged with 250 must reach the next hop at least
once.

- Next hop: Postfix's `smtp-sink`, dumping every transaction into its own
  file (independent of mailgate).
- Load: `smtp-source -s 10 -l 2048` in a loop (restarted whenever it stops
  because mailgate died), plus Python senders that give each message a
  unique `X-Crash-Tag` header and record which ones got 250.
- After the last restart the load stops, the queue must drain, and every
  acknowledged tag must be in the sink. Duplicates (delivered more than
  once: delivered, then killed before the removal was durable) are allowed
  and reported.
"""

from __future__ import annotations

import collections
import os
import random
import re
import shutil
import smtplib
import subprocess
import threading
import time
import uuid

import pytest

from postfix import (
    FAST_DELIVERY,
    SmtpSink,
    domain_toml,
    require_postfix,
    scratch_dir,
    set_delivery,
    tool,
)

KILLS = 12
SENDERS = 3
SOURCE_SESSIONS = 10
DRAIN_TIMEOUT = 60.0
TAG_RX = re.compile(rb"^X-Crash-Tag: (\S+)", re.M)
SOURCE_MSGID_RX = re.compile(rb"^Message-Id: <(\S+)>", re.M | re.I)
MAILGATE_ID_RX = re.compile(rb"\(mailgate\) with E?SMTP\s+id (\S+)")


@pytest.fixture
def crash_env(request):
    require_postfix()
    work = scratch_dir("mailgate-crash-")
    sink = SmtpSink(work / "dump").start()
    failed_before = request.session.testsfailed
    yield work, sink
    sink.stop()
    if request.session.testsfailed > failed_before:
        print(f"\nsmtp-sink log:\n{sink.log_text()[-3000:]}\n(kept {work})")
    else:
        shutil.rmtree(work, ignore_errors=True)


class Load:
    """smtp-source in a restart loop plus tagged Python senders."""

    def __init__(self, port: int, can_send):
        self.port = port
        self.can_send = can_send
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.source_proc: subprocess.Popen | None = None
        self.source_runs: list[tuple[int, int, str]] = []  # (rc, counter, stderr tail)
        self.source_spans: list[tuple[float, float]] = []
        self.acked: dict[str, str] = {}
        self.attempted: set[str] = set()
        self.unanswered = 0  # DATA sent, connection lost before a reply
        self.refused: collections.Counter = collections.Counter()
        self.threads = [threading.Thread(target=self._source_loop, daemon=True)]
        self.threads += [threading.Thread(target=self._sender, args=(i,), daemon=True)
                         for i in range(SENDERS)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stop_event.set()
        with self.lock:
            p = self.source_proc
        if p and p.poll() is None:
            p.terminate()
        for t in self.threads:
            t.join(30)
        with self.lock:
            p = self.source_proc
        if p and p.poll() is None:
            p.kill()
            p.wait()
        assert not any(t.is_alive() for t in self.threads), "load threads did not stop"

    def _source_loop(self):
        while not self.stop_event.is_set():
            if not self.can_send():
                time.sleep(0.05)
                continue
            with self.lock:
                if self.stop_event.is_set():
                    return
                p = subprocess.Popen(
                    [tool("smtp-source"), "-c", "-s", str(SOURCE_SESSIONS), "-m", "100000", "-l", "2048",
                     "-M", "source.src.test", "-f", "s@src.test", "-t", "r@dst.test",
                     f"127.0.0.1:{self.port}"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                )
                self.source_proc = p
            started = time.monotonic()
            out, err = p.communicate()
            self.source_spans.append((started, time.monotonic()))
            counts = re.findall(rb"(\d+)", out)
            counter = int(counts[-1]) if counts else 0
            self.source_runs.append((p.returncode, counter,
                                     err.decode(errors="replace").strip()[-200:]))
            time.sleep(0.05)

    def _sender(self, idx: int):
        n = 0
        run = uuid.uuid4().hex[:8]
        while not self.stop_event.is_set():
            if not self.can_send():
                time.sleep(0.05)
                continue
            try:
                with smtplib.SMTP("127.0.0.1", self.port, local_hostname="tagger.src.test",
                                  timeout=10) as s:
                    s.ehlo()
                    for _ in range(5):  # a few messages per connection
                        if self.stop_event.is_set():
                            break
                        tag = f"{run}-{idx}-{n}"
                        n += 1
                        code, resp = s.mail("tagger@src.test")
                        if code != 250:
                            self.refused[f"MAIL {code}"] += 1
                            s.rset()
                            continue
                        code, resp = s.rcpt("tagged@dst.test")
                        if code != 250:
                            self.refused[f"RCPT {code}"] += 1
                            s.rset()
                            continue
                        body = (f"From: <tagger@src.test>\r\nTo: <tagged@dst.test>\r\n"
                                f"Subject: crash test {tag}\r\nX-Crash-Tag: {tag}\r\n"
                                f"Message-ID: <{tag}@src.test>\r\n\r\n"
                                + f"tagged message {tag}\r\n" * 20)
                        self.attempted.add(tag)
                        try:
                            code, resp = s.data(body.encode())
                        except smtplib.SMTPServerDisconnected:
                            self.unanswered += 1
                            raise
                        if code == 250:
                            self.acked[tag] = resp.decode(errors="replace")
                        else:
                            self.refused[f"DATA {code}"] += 1
            except (OSError, smtplib.SMTPException):
                time.sleep(0.02)


def read_sink(sink: SmtpSink):
    tags: collections.Counter = collections.Counter()
    tag_qids: dict[str, set] = collections.defaultdict(set)
    source_ids: collections.Counter = collections.Counter()
    other = 0
    files = sink.files()
    for f in files:
        try:
            data = f.read_bytes()
        except OSError:
            continue
        m = TAG_RX.search(data)
        if m:
            tag = m.group(1).decode()
            tags[tag] += 1
            q = MAILGATE_ID_RX.search(data)
            tag_qids[tag].add(q.group(1).decode() if q else None)
            continue
        if b"X-Mail-Args: <s@src.test>" in data:
            mid = SOURCE_MSGID_RX.search(data)
            source_ids[mid.group(1).decode() if mid else f"?{f}"] += 1
        else:
            other += 1
    return len(files), tags, tag_qids, source_ids, other


def test_kill9_under_load_every_acknowledged_message_is_delivered(mailgate_factory, crash_env):
    work, sink = crash_env
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"\ncrash test seed {seed} (set CRASH_SEED to repeat)")

    srv = mailgate_factory(
        "mg", extra_toml=domain_toml("dst.test", sink.url()),
        limits={"max_connections_per_ip": 100},
    )
    set_delivery(srv, **FAST_DELIVERY)
    srv.start()

    up = threading.Event()
    up.set()
    load = Load(srv.mx_port, up.is_set).start()
    t0 = time.monotonic()
    kills = 0
    kill_times: list[float] = []
    try:
        time.sleep(1.5)
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.2, 1.5))
            up.clear()
            srv.kill()
            kill_times.append(time.monotonic())
            kills += 1
            srv.start(timeout=30)
            up.set()
        time.sleep(1.0)
    finally:
        load.stop()
    load_s = time.monotonic() - t0

    # The queue must drain.
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        q = srv.queue_list()
        if not q or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    drain_s = time.monotonic() - t0 - load_s

    acked = set(load.acked)
    # The sink writes before it answers; allow a moment for the last file.
    deadline = time.monotonic() + 5
    while True:
        n_files, tags, tag_qids, source_ids, other = read_sink(sink)
        missing = acked - set(tags)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.3)

    dups = {t: c for t, c in tags.items() if c > 1}
    source_total = sum(c for _, c, _ in load.source_runs)
    source_dups = sum(1 for c in source_ids.values() if c > 1)
    spool_corrupt = srv.data_dir / "spool" / "corrupt"
    corrupt = sorted(p.name for p in spool_corrupt.iterdir()) if spool_corrupt.is_dir() else []

    print(f"kills: {kills} in {load_s:.1f}s of load; queue "
          f"{'drained' if not q else 'NOT drained'} {drain_s:.1f}s later")
    print(f"tagged: attempted {len(load.attempted)}, acknowledged (250) {len(acked)}, "
          f"no reply {load.unanswered}, refused {dict(load.refused)}")
    print(f"tagged: delivered {len(set(tags) & acked)} of the acknowledged "
          f"(+{len(set(tags) - acked)} unacknowledged that arrived anyway), "
          f"duplicates {len(dups)} (extra copies {sum(c - 1 for c in dups.values())})")
    print(f"smtp-source: {len(load.source_runs)} runs, counter total {source_total} "
          f"(counted when '.' is sent); sink holds "
          f"{len(source_ids)} distinct smtp-source messages, {source_dups} duplicated")
    print(f"sink files {n_files} (other {other}); spool/corrupt: {corrupt}")
    why = collections.Counter(re.sub(r"\d+", "N", e.splitlines()[-1]) if e else f"rc={rc}"
                              for rc, _, e in load.source_runs)
    print("timeline: kills at " + " ".join(f"{k - t0:.1f}" for k in kill_times)
          + "; smtp-source runs " + " ".join(f"{a - t0:.1f}-{b - t0:.1f}" for a, b in load.source_spans))
    print(f"smtp-source run endings: {dict(why)}")

    recovered = [int(n) for n in re.findall(r"spool recovered messages=(\d+)", srv.log_text())]
    print(f"messages recovered at each start: {recovered}")

    states = collections.Counter(r["status"] for m in q for r in m["recipients"])
    assert not q, (f"queue not drained {DRAIN_TIMEOUT}s after the load stopped: {len(q)} "
                   f"messages {dict(states)}; first: {q[:3]}")
    assert not missing, (
        f"{len(missing)} of {len(acked)} acknowledged messages never reached the sink, "
        f"e.g. {sorted(missing)[:5]} (queue ids {[load.acked[t] for t in sorted(missing)[:5]]})")
    assert len(acked) > 100, f"too little load to mean anything: {len(acked)} acknowledged"
    assert kills == KILLS
    assert len(recovered) == KILLS + 1 and sum(recovered) > 0, (
        f"the kills never caught queued mail, so recovery was not exercised: {recovered}")
    unknown = set(tags) - load.attempted
    assert not unknown, f"sink got tags nobody sent: {sorted(unknown)[:5]}"
    assert other == 0, f"sink got {other} messages from neither sender"
    # A duplicate must be the same queued message delivered again, never one
    # SMTP transaction stored twice under two queue ids.
    split = {t: q for t, q in tag_qids.items() if len(q) != 1 or None in q}
    assert not split, f"tagged messages with several (or no) mailgate queue ids: {list(split.items())[:5]}"
    # smtp-source counts a message when it sends the final "." (before the
    # reply) and exits at the first failure, so in each run all but at most
    # one message per session (10) were acknowledged with 250.
    floor = source_total - SOURCE_SESSIONS * len(load.source_runs)
    assert len(source_ids) >= floor, (
        f"smtp-source completed {source_total} messages in {len(load.source_runs)} runs, "
        f"so at least {floor} were acknowledged, but the sink holds {len(source_ids)}")
