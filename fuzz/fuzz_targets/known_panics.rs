//! Shared by the targets that reach mail-parser's message parser: its
//! 0.11.9 has `debug_assert!(false, "Invalid part ID, could not find
//! multipart.")` (`parsers/message.rs:485`) on a state it then handles (the
//! part ends where the stream is). cargo-fuzz builds every crate with debug
//! assertions, so that line panics here; the daemon's release build has
//! none and carries on. [`run`] lets exactly that panic through as "no
//! result" and leaves every other panic to libFuzzer.

use std::panic::{AssertUnwindSafe, PanicHookInfo, catch_unwind};
use std::sync::Once;

const KNOWN: &str = "Invalid part ID, could not find multipart.";

fn known(info: &PanicHookInfo<'_>) -> bool {
    info.payload_as_str() == Some(KNOWN) && info.location().is_some_and(|l| l.file().contains("mail-parser"))
}

/// Runs `f`; `None` if it hit mail-parser's known debug assertion.
pub fn run<T>(f: impl FnOnce() -> T) -> Option<T> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // libFuzzer's hook aborts (a crash); keep it for everything else.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !known(info) {
                previous(info)
            }
        }));
    });
    catch_unwind(AssertUnwindSafe(f)).ok()
}
