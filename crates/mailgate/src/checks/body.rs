//! A message body as the checks and the signer read it: in memory or a
//! stretch of a file, fed in chunks and never loaded whole; and the DKIM
//! and ARC body hashes of it, computed in one streaming pass.
//!
//! The header block (the fields and the empty line after them) is held in
//! memory apart from the body: mail-auth parses the header block alone
//! (its body is then empty) and gets its `body_hashes` from [`digest`];
//! mail-auth then compares them with `bh=` and verifies the signature.
//!
//! Every lane is canonicalized by `mailgate_core::dkim::BodyCanonicalizer`
//! (the signer's, RFC 6376 §3.4), not by mail-auth 0.13's `BodyHasher`,
//! which gets two things wrong: in relaxed it keeps lines of white space
//! only at the end of the body (§3.4.4 reduces them to empty lines, which
//! then go), so correctly signed mail ending in such lines failed DKIM;
//! and it cuts `l=` on the raw body, where §3.4.5 counts canonical octets.
//!
//! May import: `mail-auth`, `ring`, `tokio`, `mailgate_core::dkim`.
//! Nothing else of mailgate.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use mail_auth::AuthenticatedMessage;
use mail_auth::common::crypto::HashAlgorithm;
use mail_auth::dkim::Canonicalization;
use mailgate_core::dkim::{BodyCanonicalizer, Canon, CanonicalSink};

/// The largest chunk [`Body::for_each_chunk`] hands out.
pub const CHUNK: usize = 64 * 1024;

/// Memory bodies above this are hashed off the async threads too.
const INLINE_MAX: u64 = 1024 * 1024;

/// A message body: everything after the empty line that ends the header block.
#[derive(Clone)]
pub enum Body {
    /// `data[start..]` is the body (small messages, `mailgate verify`, tests).
    Memory { data: Arc<Vec<u8>>, start: usize },
    /// `len` octets of `file` from `start` (a message spilled to disk).
    File { file: Arc<std::fs::File>, start: u64, len: u64 },
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Memory { start, .. } => write!(f, "Body::Memory({} octets from {start})", self.len()),
            Body::File { start, len, .. } => write!(f, "Body::File({len} octets from {start})"),
        }
    }
}

impl Body {
    /// No body at all.
    pub fn empty() -> Body {
        Body::Memory { data: Arc::new(Vec::new()), start: 0 }
    }

    /// Splits a message held whole: returns the length of its header block
    /// (`whole[..n]`, see [`header_end`]; all of it when there is no empty
    /// line) and its body, sharing `whole`.
    pub fn split(whole: &Arc<Vec<u8>>) -> (usize, Body) {
        let n = header_end(whole).unwrap_or(whole.len());
        (n, Body::Memory { data: Arc::clone(whole), start: n })
    }

    pub fn len(&self) -> u64 {
        match self {
            Body::Memory { data, start } => data.len().saturating_sub(*start) as u64,
            Body::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Feeds the body to `f` in order, in chunks of at most 64 KiB
    /// (positional reads for File; never loads it whole).
    pub fn for_each_chunk(&self, f: impl FnMut(&[u8])) -> io::Result<()> {
        self.for_each_chunk_sized(CHUNK, f)
    }

    /// As [`Body::for_each_chunk`], in chunks of at most `size` octets
    /// (tests feed tiny chunks to split the body everywhere).
    pub(crate) fn for_each_chunk_sized(&self, size: usize, mut f: impl FnMut(&[u8])) -> io::Result<()> {
        let size = size.max(1);
        match self {
            Body::Memory { data, start } => {
                for chunk in data.get(*start..).unwrap_or_default().chunks(size) {
                    f(chunk);
                }
            }
            Body::File { file, start, len } => {
                let mut buf = vec![0u8; size.min(usize::try_from(*len).unwrap_or(usize::MAX))];
                let mut done = 0u64;
                while done < *len {
                    let n = usize::try_from((len - done).min(buf.len() as u64)).unwrap_or(buf.len());
                    let piece = buf.get_mut(..n).unwrap_or_default();
                    file.read_exact_at(piece, start + done)
                        .map_err(|e| io::Error::new(e.kind(), format!("reading the message body at octet {} of {len}: {e}", done)))?;
                    f(piece);
                    done += n as u64;
                }
            }
        }
        Ok(())
    }
}

/// Where the header block ends: the offset just past the CRLF CRLF (the
/// empty line), or None if `bytes` holds no empty line. A message that
/// starts with its empty line has an empty header block: `Some(2)`.
pub fn header_end(bytes: &[u8]) -> Option<usize> {
    if bytes.starts_with(b"\r\n") {
        return Some(2);
    }
    bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// A body hash mail-auth may ask for: canonicalization, hash, `l=` (0:
/// the whole body), the key of `AuthenticatedMessage::body_hashes`.
pub type Lane = (Canonicalization, HashAlgorithm, u64);

/// Body hashes in the form of `AuthenticatedMessage::body_hashes`.
pub type BodyHashes = Vec<(Canonicalization, HashAlgorithm, u64, Vec<u8>)>;

/// What one pass over a body found.
#[derive(Debug, Clone, Default)]
pub struct BodyDigest {
    /// Octets in the body as mail-auth sees it.
    pub len: u64,
    pub hashes: BodyHashes,
    /// (canonicalization, l, canonical octets hashed) for every lane.
    canonical: Vec<(Canonicalization, u64, u64)>,
}

impl BodyDigest {
    /// How many canonical octets under `c` were hashed for `l=` (at most
    /// `l`; 0: the whole canonical body), if a lane computed it.
    pub fn canonical_len(&self, c: Canonicalization, l: u64) -> Option<u64> {
        self.canonical.iter().find(|(cc, ll, _)| *cc == c && *ll == l).map(|(_, _, n)| *n)
    }

    /// Gives `msg`, parsed from a header block, the body hashes of the
    /// body that goes with it.
    pub fn apply(&self, msg: &mut AuthenticatedMessage<'_>) {
        msg.body_hashes = self.hashes.clone();
    }
}

/// The lanes `msg`'s DKIM signatures and ARC-Message-Signatures ask for
/// (mail-auth's parse lists them in `body_hashes`), then `extra`, and for
/// every lane with `l=` the same lane over the whole body, so that the
/// body's full canonical length is known (`dkim::pass_objection`).
pub fn lanes(msg: &AuthenticatedMessage<'_>, extra: &[Lane]) -> Vec<Lane> {
    let mut out: Vec<Lane> = Vec::new();
    let mut add = |lane: Lane| {
        if !out.contains(&lane) {
            out.push(lane);
        }
    };
    for (c, h, l, _) in &msg.body_hashes {
        add((*c, *h, *l));
    }
    for lane in extra {
        add(*lane);
    }
    for (c, h, l, _) in &msg.body_hashes {
        if *l > 0 {
            add((*c, *h, 0));
        }
    }
    for (c, h, l) in extra {
        if *l > 0 {
            add((*c, *h, 0));
        }
    }
    out
}

/// A digest context as a canonicalizer's sink.
struct Digest(ring::digest::Context);

impl CanonicalSink for Digest {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn hasher(h: HashAlgorithm) -> Digest {
    let alg = match h {
        HashAlgorithm::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        HashAlgorithm::Sha256 => &ring::digest::SHA256,
    };
    Digest(ring::digest::Context::new(alg))
}

fn canon(c: Canonicalization) -> Canon {
    match c {
        Canonicalization::Simple => Canon::Simple,
        Canonicalization::Relaxed => Canon::Relaxed,
    }
}

/// `l=` as a canonicalizer's limit (mail-auth's 0: none).
fn limit(l: u64) -> Option<u64> {
    (l > 0).then_some(l)
}

/// The canonical length of a body held whole under `c`, cut at `l`
/// canonical octets (0: all), as [`digest`] counts it.
pub fn canonical_len(c: Canonicalization, body: &[u8], l: u64) -> u64 {
    struct Count;
    impl CanonicalSink for Count {
        fn write(&mut self, _: &[u8]) {}
    }
    let mut h = BodyCanonicalizer::new(canon(c), limit(l), Count);
    h.update(body);
    h.finish().1.written
}

/// Hashes `prefix` then `body` for every lane, in one pass. `prefix` is
/// whatever of the header block mail-auth counted as body (normally
/// nothing: `header[msg.body_offset()..]`).
pub fn digest(prefix: &[u8], body: &Body, lanes: &[Lane]) -> io::Result<BodyDigest> {
    digest_sized(prefix, body, lanes, CHUNK)
}

pub(crate) fn digest_sized(prefix: &[u8], body: &Body, lanes: &[Lane], chunk: usize) -> io::Result<BodyDigest> {
    let mut hashers: Vec<(Lane, BodyCanonicalizer<Digest>)> =
        lanes.iter().map(|&(c, h, l)| ((c, h, l), BodyCanonicalizer::new(canon(c), limit(l), hasher(h)))).collect();
    let mut len = 0u64;
    let mut feed = |piece: &[u8]| {
        len += piece.len() as u64;
        for (_, h) in hashers.iter_mut() {
            h.update(piece);
        }
    };
    for piece in prefix.chunks(chunk.max(1)) {
        feed(piece);
    }
    body.for_each_chunk_sized(chunk, &mut feed)?;
    let mut out = BodyDigest { len, hashes: Vec::with_capacity(hashers.len()), canonical: Vec::with_capacity(hashers.len()) };
    for ((c, h, l), hasher) in hashers {
        let (digest, length) = hasher.finish();
        out.canonical.push((c, l, length.written));
        out.hashes.push((c, h, l, digest.0.finish().as_ref().to_vec()));
    }
    Ok(out)
}

/// [`digest`] for async callers: a file (or a large memory body) is read
/// and hashed on a blocking thread, so a 20 MB body does not stall the
/// async workers for the tens of milliseconds it takes.
pub async fn digest_async(prefix: Vec<u8>, body: Body, lanes: Vec<Lane>) -> io::Result<BodyDigest> {
    if matches!(body, Body::Memory { .. }) && body.len() <= INLINE_MAX {
        return digest(&prefix, &body, &lanes);
    }
    tokio::task::spawn_blocking(move || digest(&prefix, &body, &lanes))
        .await
        .map_err(|e| io::Error::other(format!("the body hashing task failed: {e}")))?
}

/// For tests: parses the header block of a message held whole and gives
/// it the streamed hashes of its body, as `Checker::check` does, with the
/// lanes `extra` adds (e.g. `arc::body_lanes`). `None`: the header does
/// not parse.
#[cfg(test)]
pub(crate) fn parse_streamed<'a>(
    whole: &'a Arc<Vec<u8>>,
    strict: bool,
    extra: impl FnOnce(&AuthenticatedMessage<'_>) -> Vec<Lane>,
) -> Option<(AuthenticatedMessage<'a>, BodyDigest)> {
    let (n, body) = Body::split(whole);
    let header = whole.get(..n)?;
    let mut msg = AuthenticatedMessage::parse_with_opts(header, None, strict)?;
    let lanes = lanes(&msg, &extra(&msg));
    let prefix = header.get(msg.body_offset()..).unwrap_or_default();
    let d = digest_sized(prefix, &body, &lanes, 4096).ok()?;
    d.apply(&mut msg);
    Some((msg, d))
}

#[cfg(test)]
#[path = "body_tests.rs"]
mod tests;
