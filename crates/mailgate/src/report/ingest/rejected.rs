//! Keeping a rejected input for a human: a copy in `data_dir/reports/
//! rejected/` named by its time and content hash (never by anything the
//! sender wrote), with the format's extension as sniffed, and a `.reason`
//! file beside it. The same input rejected twice is one file.
//!
//! May import: `report::ingest::unpack`.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::unpack::{printable, sniff};

/// Writes the copy and its reason; answers the copy's path.
pub fn keep(dir: &Path, bytes: &[u8], hint: &str, reason: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().take(12).map(|b| format!("{b:02x}")).collect();
    let ext = sniff(bytes).map(|f| f.extension()).unwrap_or("bin");
    let name = format!("{hex}.{ext}");
    let path = dir.join(&name);
    write_atomically(&path, bytes)?;
    let text = format!(
        "input: {}\nrejected: {}\nsize: {} bytes\nreason: {}\n",
        printable(hint),
        crate::store::unix_now(),
        bytes.len(),
        printable(reason)
    );
    write_atomically(&dir.join(format!("{name}.reason")), text.as_bytes())?;
    Ok(path)
}

/// Temporary file, then rename: a reader never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}
