//! Dropping root: once `serve` has bound its listeners, it gives up root for
//! `[server] user` (supplementary groups, group, then user) and hands it
//! `data_dir`. Imports only libc and std; `server` calls it.

use std::ffi::{CStr, CString};
use std::io;
use std::path::Path;

use anyhow::{Context, bail};

/// The user `[server] user` defaults to.
pub const DEFAULT_USER: &str = "mailgate";

/// A user from the password database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Looks `name` up with `getpwnam_r`; `Ok(None)` when there is no such user.
pub fn lookup(name: &str) -> io::Result<Option<Account>> {
    let c_name = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a user name has no NUL byte"))?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: an all-zero passwd is a valid value for an out-parameter.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; buf outlives the use
        // of the strings it holds (copied out below before buf changes).
        let rc = unsafe { libc::getpwnam_r(c_name.as_ptr(), &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Ok(None);
        }
        // SAFETY: on success pw_name points at a NUL-terminated string in buf.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned();
        return Ok(Some(Account { name, uid: pwd.pw_uid, gid: pwd.pw_gid }));
    }
}

/// Called by `serve` after binding and before anything writes a file: as
/// root, switches to `user` (or `mailgate`), first making `data_dir` and
/// everything in it belong to that user. Not root: nothing to do.
pub fn drop_root(user: Option<&str>, data_dir: &Path) -> anyhow::Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        tracing::debug!("not started as root: no privileges to drop");
        return Ok(());
    }
    let name = user.unwrap_or(DEFAULT_USER);
    let account = lookup(name).with_context(|| format!("cannot look up the user {name:?}"))?;
    let account = match (account, user) {
        (Some(a), _) => a,
        (None, Some(_)) => bail!("[server] user {name:?} does not exist: create it (useradd --system {name}) or change [server] user"),
        (None, None) => {
            tracing::warn!("started as root and there is no user \"mailgate\": running as root; create that user or set [server] user");
            return Ok(());
        }
    };
    if account.uid == 0 {
        tracing::warn!(user = %account.name, "[server] user is root: running as root");
        return Ok(());
    }
    chown_tree(data_dir, account.uid, account.gid).with_context(|| format!("cannot give {} to the user {name:?}", data_dir.display()))?;
    switch(&account).with_context(|| format!("cannot switch to the user {name:?}"))?;
    tracing::info!(user = %account.name, uid = account.uid, gid = account.gid, "dropped root privileges");
    Ok(())
}

/// initgroups, setgid, setuid in that order (each needs the privilege the
/// next one gives up), then proof that root cannot be regained.
fn switch(a: &Account) -> anyhow::Result<()> {
    let c_name = CString::new(a.name.as_str()).context("the user name has a NUL byte")?;
    // SAFETY: c_name is a valid C string; these calls only change the
    // process credentials (glibc applies them to every thread).
    unsafe {
        if libc::initgroups(c_name.as_ptr(), a.gid) != 0 {
            return Err(io::Error::last_os_error()).context("initgroups");
        }
        if libc::setgid(a.gid) != 0 {
            return Err(io::Error::last_os_error()).context("setgid");
        }
        if libc::setuid(a.uid) != 0 {
            return Err(io::Error::last_os_error()).context("setuid");
        }
        if libc::setuid(0) == 0 || libc::seteuid(0) == 0 || (a.gid != 0 && libc::setgid(0) == 0) {
            bail!("root could be regained after setuid; refusing to run");
        }
        if libc::getuid() != a.uid || libc::geteuid() != a.uid || libc::getgid() != a.gid || libc::getegid() != a.gid {
            bail!("credentials did not change to uid {} gid {}", a.uid, a.gid);
        }
    }
    Ok(())
}

/// `lchown` of `dir` and everything under it; symbolic links are not
/// followed, so a link cannot hand a file outside `dir` to the user.
fn chown_tree(dir: &Path, uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_root_and_misses_nonsense() {
        let root = lookup("root").unwrap().unwrap(); // ok: every system has root
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(lookup("no-such-user-mailgate-xyz").unwrap(), None); // ok: test
        assert!(lookup("a\0b").is_err());
    }
}
