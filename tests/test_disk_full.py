"""A full spool filesystem: a 250 only for messages that are really stored,
452 4.3.1 / 451 4.3.0 otherwise, and [spool].min_free_space refusing MAIL
early with 452 4.3.1."""

import errno
import re
import subprocess
import time
from pathlib import Path

import pytest

from helpers import Dialogue, queue_id

MB = 1024 * 1024


@pytest.fixture
def tmpfs(tmp_path):
    """Mounts a small tmpfs; yields a function mount(size) -> path.

    Request this fixture before mailgate_factory so that servers are stopped
    before it is unmounted.
    """
    mounted = []

    def mount(size: str = "3m"):
        path = tmp_path / f"tmpfs{len(mounted)}"
        path.mkdir()
        p = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs (needs root / CAP_SYS_ADMIN): {p.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def message(i: int, size: int) -> bytes:
    line = b"z" * 76 + b"\r\n"
    return b"Subject: filler %d\r\n\r\n" % i + line * (size // len(line))


def test_full_spool_never_gets_250_for_an_unstored_message(tmpfs, mailgate_factory):
    data_dir = tmpfs("3m") / "data"
    srv = mailgate_factory(
        data_dir=data_dir,
        limits={"max_message_size": 10 * MB},
        spool={"min_free_space": 0, "segment_size": MB},
    ).start()
    accepted = []
    refusals = []
    with srv.smtp(timeout=30) as d:
        d.ehlo()
        for i in range(60):
            r = d.cmd(f"MAIL FROM:<filler{i}@sender.test>")
            if r.code != 250:
                refusals.append(r)
                assert r.is_(452, "4.3.1"), r
                d.cmd("RSET")
                if len(refusals) >= 3:
                    break
                continue
            assert d.cmd("RCPT TO:<b@example.test>").code == 250
            assert d.cmd("DATA").code == 354
            d.send(message(i, 200 * 1024) + b".\r\n")
            r = d.read_reply()
            if r.code == 250:
                accepted.append(queue_id(r))
                continue
            refusals.append(r)
            assert r.is_(452, "4.3.1") or r.is_(451, "4.3.0"), r
            if len(refusals) >= 3:
                break
        # After refusals the session is still in sync.
        assert d.cmd("NOOP").code == 250
    assert refusals, f"the 3 MB tmpfs never filled up ({len(accepted)} accepted)"
    assert accepted, "nothing was accepted before the disk was full"
    listed = srv.queue_ids()
    assert listed == set(accepted), (
        f"250 but not listed: {set(accepted) - listed}; listed but never acknowledged: {listed - set(accepted)}"
    )
    assert srv.stop() == 0
    srv.start()
    listed = srv.queue_ids()
    assert set(accepted) <= listed, f"lost after restart: {set(accepted) - listed}"
    assert listed == set(accepted), f"unacknowledged messages appeared: {listed - set(accepted)}"


def test_full_spool_with_concurrent_sessions_and_sigkill(tmpfs, mailgate_factory):
    import threading

    data_dir = tmpfs("3m") / "data"
    srv = mailgate_factory(
        data_dir=data_dir,
        # Refusals count as session errors; keep the limit out of the way.
        limits={"max_message_size": 10 * MB, "max_errors": 1000},
        spool={"min_free_space": 0, "segment_size": MB},
    ).start()
    accepted = []
    bad = []

    def client(k):
        try:
            with Dialogue(srv.mx_port, timeout=30) as d:
                d.ehlo()
                for i in range(15):
                    r = d.cmd(f"MAIL FROM:<c{k}-{i}@sender.test>")
                    if r.code != 250:
                        if not r.is_(452, "4.3.1"):
                            bad.append(r)
                        d.cmd("RSET")
                        continue
                    d.cmd("RCPT TO:<b@example.test>")
                    d.cmd("DATA")
                    d.send(message(i, 100 * 1024) + b".\r\n")
                    r = d.read_reply()
                    if r.code == 250:
                        accepted.append(queue_id(r))
                    elif not (r.is_(452, "4.3.1") or r.is_(451, "4.3.0")):
                        bad.append(r)
        except Exception as e:
            bad.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not bad, bad
    assert accepted
    assert srv.queue_ids() == set(accepted)
    srv.kill()
    srv.start()
    listed = srv.queue_ids()
    assert set(accepted) <= listed, f"lost after SIGKILL: {set(accepted) - listed}"


def test_min_free_space_above_free_space_refuses_mail_452_4_3_1(tmpfs, mailgate_factory):
    data_dir = tmpfs("3m") / "data"
    srv = mailgate_factory(
        data_dir=data_dir,
        spool={"min_free_space": 4 * MB, "segment_size": MB},
    ).start()
    with srv.smtp() as d:
        d.ehlo()
        r = d.cmd("MAIL FROM:<a@sender.test>")
        assert r.is_(452, "4.3.1"), r
        assert d.cmd("RCPT TO:<b@example.test>").code == 503
    assert srv.queue_list() == []


def test_declared_size_larger_than_free_space_refuses_mail_452_4_3_1(tmpfs, mailgate_factory):
    data_dir = tmpfs("3m") / "data"
    srv = mailgate_factory(
        data_dir=data_dir,
        limits={"max_message_size": 50 * MB},
        spool={"min_free_space": 0, "segment_size": MB},
    ).start()
    with srv.smtp() as d:
        d.ehlo()
        r = d.cmd(f"MAIL FROM:<a@sender.test> SIZE={10 * MB}")
        assert r.is_(452, "4.3.1"), r
        # A small message still fits.
        r = d.cmd("MAIL FROM:<a@sender.test> SIZE=1000")
        assert r.is_(250, "2.1.0"), r


@pytest.mark.mailgate(spool={"min_free_space": 1 << 60})
def test_min_free_space_larger_than_any_disk_refuses_mail_452_4_3_1(server):
    with server.smtp() as d:
        d.ehlo()
        r = d.cmd("MAIL FROM:<a@sender.test>")
        assert r.is_(452, "4.3.1"), r


@pytest.mark.mailgate(spool={"min_free_space": 1 << 60})
def test_min_free_space_refusal_seen_by_swaks(server, swaks):
    p = swaks("--server", f"127.0.0.1:{server.mx_port}", "--from", "a@sender.test", "--to", "b@example.test")
    out = p.stdout + p.stderr
    assert p.returncode == 23, out
    assert "452 4.3.1" in out, out


def test_messages_accepted_after_space_is_freed_survive_a_crash(tmpfs, mailgate_factory):
    """Fill the disk, free space again, keep sending, SIGKILL, restart: a
    failed write must not leave the spool so that later acknowledged
    messages are lost in recovery."""
    mnt = tmpfs("3m")
    filler = mnt / "filler"
    filler.write_bytes(b"\0" * (1 * MB))
    srv = mailgate_factory(
        data_dir=mnt / "data",
        limits={"max_message_size": 10 * MB},
        spool={"min_free_space": 0, "segment_size": MB},
    ).start()
    accepted = []
    refused = 0
    with srv.smtp(timeout=30) as d:
        d.ehlo()
        for i in range(40):
            r = d.transaction(sender=f"before{i}@sender.test", body=message(i, 150 * 1024))
            if r.code == 250:
                accepted.append(queue_id(r))
            else:
                assert r.is_(452, "4.3.1") or r.is_(451, "4.3.0"), r
                refused += 1
                if refused >= 2:
                    break
        assert refused, "the disk never filled up"
        filler.unlink()
        time.sleep(1.5)  # let the free-space probe see the change
        after = []
        for i in range(4):
            r = d.transaction(sender=f"after{i}@sender.test", body=message(i, 150 * 1024))
            if r.code == 250:
                after.append(queue_id(r))
            else:
                assert r.is_(452, "4.3.1") or r.is_(451, "4.3.0"), r
    assert after, "nothing accepted after 1 MB was freed"
    accepted += after
    assert srv.queue_ids() == set(accepted)
    srv.kill()
    srv.start()
    listed = srv.queue_ids()
    assert set(accepted) <= listed, f"lost after SIGKILL: {sorted(set(accepted) - listed)} (of which after freeing: {sorted(set(after) - listed)})"


def send_or_refused(d, sender: str, body: bytes):
    """One transaction; the refusal at MAIL (452 4.3.1) or the final reply."""
    r = d.cmd(f"MAIL FROM:<{sender}>")
    if r.code != 250:
        return r
    assert d.cmd("RCPT TO:<b@example.test>").code == 250
    assert d.cmd("DATA").code == 354
    d.send(body + b".\r\n")
    return d.read_reply()


def test_deleting_queued_messages_frees_space_at_once(tmpfs, mailgate_factory):
    """On a full 8 MiB spool, deleting 5 queued 200 KB messages makes room:
    a new message is accepted within seconds (their files are unlinked, not
    left inside segments until compaction), and after a restart the queue
    is exactly what was acknowledged minus what was deleted."""
    mnt = tmpfs("8m")
    srv = mailgate_factory(
        data_dir=mnt / "data",
        limits={"max_message_size": 10 * MB},
        spool={"min_free_space": 256 * 1024, "segment_size": MB},
    ).start()
    accepted = []
    with srv.smtp(timeout=30) as d:
        d.ehlo()
        for i in range(80):
            r = send_or_refused(d, f"fill{i}@sender.test", message(i, 200 * 1024))
            if r.code != 250:
                assert r.is_(452, "4.3.1") or r.is_(451, "4.3.0"), r
                d.cmd("RSET")
                break
            accepted.append(queue_id(r))
        else:
            pytest.fail("80 messages of 200 KB fit on an 8 MiB tmpfs")
    assert len(accepted) >= 20, f"only {len(accepted)} messages fit"
    # Still full a moment later: nothing frees itself.
    time.sleep(1.5)
    with srv.smtp(timeout=30) as d:
        d.ehlo()
        r = send_or_refused(d, "still-full@sender.test", message(0, 200 * 1024))
        assert r.code != 250, "the spool was not full after all"
    deleted = accepted[:5]
    for qid in deleted:
        srv.queue_delete(qid)
    t0 = time.monotonic()
    new = None
    with srv.smtp(timeout=30) as d:
        d.ehlo()
        while time.monotonic() - t0 < 5:
            r = send_or_refused(d, "after-delete@sender.test", message(1, 200 * 1024))
            if r.code == 250:
                new = queue_id(r)
                break
            assert r.is_(452, "4.3.1") or r.is_(451, "4.3.0"), r
            d.cmd("RSET")
            time.sleep(0.25)
    assert new, "no message accepted within 5 s of deleting five"
    expected = (set(accepted) - set(deleted)) | {new}
    assert srv.queue_ids() == expected
    assert srv.stop() == 0
    srv.start()
    assert srv.queue_ids() == expected, "the queue changed across a restart"


def fill_to_the_last_block(path: Path) -> int:
    """Writes `path` until the file system is full; returns its size."""
    size = 0
    with open(path, "wb", buffering=0) as f:
        for block in (65536, 4096, 512, 1):
            try:
                while True:
                    size += f.write(b"\0" * block)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    return size


def test_deleting_small_queued_messages_frees_space_and_nothing_else_is_lost(tmpfs, mailgate_factory):
    """Messages under 128 KiB live inside segment files. On a full 8 MiB
    spool of 20 KB messages, deleting some by a filter punches their
    content out of the segments: a new message is accepted within a few
    seconds. After a restart every remaining message is delivered with its
    content intact, and no deleted one comes back."""
    import socket

    import threading

    from postfix import PySink, _PySinkHandler, _ThreadingServer

    # The next hop first accepts connections and never greets (the kernel
    # completes them; nothing accepts them), so nothing leaves and nothing
    # is deferred while the disk is filled.
    hold = socket.socket()
    hold.bind(("127.0.0.1", 0))
    hold.listen(128)
    hold_url = f"smtp://127.0.0.1:{hold.getsockname()[1]}"
    # The sink takes 20 connections at once: more than socketserver's
    # default backlog of 5, past which the kernel drops handshakes.
    class Server(_ThreadingServer):
        request_queue_size = 128

    sink = PySink()
    sink.server.server_close()
    sink.server = Server(("127.0.0.1", 0), _PySinkHandler)
    sink.server.sink = sink
    sink.port = sink.server.server_address[1]
    sink.thread = threading.Thread(target=sink.server.serve_forever, daemon=True)
    sink.start()

    mnt = tmpfs("8m")
    srv = mailgate_factory(
        data_dir=mnt / "data",
        limits={"max_message_size": 10 * MB, "max_errors": 1000},
        spool={"min_free_space": 256 * 1024, "segment_size": MB},
        extra_toml=f'[[domain]]\nname = "dst.test"\ndkim = false\ndeliver = "{hold_url}"\n',
    ).start()
    accepted = {}  # queue id -> subject number
    try:
        with srv.smtp(timeout=30) as d:
            d.ehlo()
            for i in range(1000):
                # One in four from the sender that is deleted below.
                sender = "del@sender.test" if i % 4 == 0 else f"keep{i}@sender.test"
                r = d.cmd(f"MAIL FROM:<{sender}>")
                if r.code != 250:
                    assert r.is_(452, "4.3.1"), r
                    break
                assert d.cmd("RCPT TO:<r@dst.test>").code == 250
                assert d.cmd("DATA").code == 354
                d.send(message(i, 20 * 1000) + b".\r\n")
                r = d.read_reply()
                if r.code != 250:
                    assert r.is_(452, "4.3.1") or r.is_(451, "4.3.0"), r
                    d.cmd("RSET")
                    break
                accepted[queue_id(r)] = i
            else:
                pytest.fail("1000 messages of 20 KB fit on an 8 MiB tmpfs")
        assert len(accepted) >= 100, f"only {len(accepted)} messages fit"
        time.sleep(1.5)
        with srv.smtp(timeout=30) as d:
            d.ehlo()
            r = send_or_refused(d, "still-full@sender.test", message(0, 20 * 1000))
            assert r.code != 250, "the spool was not full after all"
        # Something else takes the rest, to the last block: the spool's own
        # writes (deferral records, the report store) can do that too. The
        # deletion must still go through (the spool gives up its reserve).
        filled = fill_to_the_last_block(mnt / "other-program")
        assert (mnt / "data" / "spool" / "reserve").stat().st_size > 0
        out = srv.cli("queue", "delete", "--sender", "del@sender.test").stdout
        assert filled == 0 or "the spool's reserve was released" in srv.log_text()
        deleted = {q for q, i in accepted.items() if i % 4 == 0}
        # Which happened: every tombstone fitted at once, or the full disk
        # refused some (ENOSPC) and they were retried one at a time once the
        # first removals had punched space free (retried_on_full_disk > 0).
        line = next((ln for ln in srv.log_text().splitlines() if "deleted by administrator (filter)" in ln), "")
        m = re.search(r"retried_on_full_disk=(\d+)", line)
        assert m, f"no filter deletion logged: {line!r}"
        how = (f"{m.group(1)} removal(s) refused by the full disk and retried" if int(m.group(1))
               else "every removal fitted on the first try")
        print(f"delete by filter on the full spool: {how}")
        assert out.split()[1] == str(len(deleted)), (out, how, line)
        t0 = time.monotonic()
        new = None
        with srv.smtp(timeout=30) as d:
            d.ehlo()
            while time.monotonic() - t0 < 5:
                r = d.cmd("MAIL FROM:<after-delete@sender.test>")
                if r.code == 250:
                    assert d.cmd("RCPT TO:<r@dst.test>").code == 250
                    assert d.cmd("DATA").code == 354
                    d.send(message(100000, 20 * 1000) + b".\r\n")
                    r = d.read_reply()
                if r.code == 250:
                    new = queue_id(r)
                    break
                assert r.is_(452, "4.3.1") or r.is_(451, "4.3.0"), r
                d.cmd("RSET")
                time.sleep(0.25)
        assert new, f"no message accepted within 5 s of deleting {len(deleted)} of {len(accepted)}"
        accepted[new] = 100000
        kept = {q: i for q, i in accepted.items() if q not in deleted}
        assert srv.queue_ids() == set(kept)
        assert srv.stop() == 0
        # Recovery replays segments with punched records in them; then
        # every message that was kept goes out, byte for byte.
        hold.close()
        srv.config_path.write_text(srv.config_path.read_text().replace(hold_url, sink.url()))
        srv.start()
        got = sink.wait_for(lambda m: True, timeout=0)
        deadline = time.monotonic() + 60
        while len(got) < len(kept) and time.monotonic() < deadline:
            time.sleep(0.2)
            got = sink.wait_for(lambda m: True, timeout=0)
        seen = {}
        for m in got:
            content = m["content"]
            # Our Received: header comes first; the message follows it.
            start = content.index(b"Subject: filler ")
            i = int(content[start + len(b"Subject: filler "):].split(b"\r\n", 1)[0])
            assert content[start:] == message(i, 20 * 1000), f"message {i} changed on the way"
            seen[i] = seen.get(i, 0) + 1
        assert sorted(seen) == sorted(kept.values()), (
            f"missing: {sorted(set(kept.values()) - set(seen))}, deleted but delivered: "
            f"{sorted(set(seen) - set(kept.values()))}; still queued: {srv.queue_list()}"
        )
        log = srv.log_text()
        assert "damaged" not in log, log[-3000:]
        corrupt = mnt / "data" / "spool" / "corrupt"
        assert not corrupt.exists() or not any(corrupt.iterdir()), list(corrupt.iterdir())
    finally:
        hold.close()
        sink.stop()
