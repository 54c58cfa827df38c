//! `mailgate config check`: every error and risky choice in a config file,
//! without starting anything. Imports only `config`.

use std::path::Path;

use anyhow::bail;

use crate::config::{Config, warnings};

/// Prints `error: ...` for every problem (then fails) or `warning: ...` for
/// every risky choice and `ok`, all on stdout.
pub fn check(path: Option<&Path>) -> anyhow::Result<()> {
    let Some(path) = path else {
        bail!("config check needs --config FILE: the file to check");
    };
    let file = path.display();
    match Config::load_all(Some(path)) {
        Err(errors) => {
            for e in &errors {
                println!("error: {e}");
            }
            bail!("{file}: {} error(s)", errors.len())
        }
        Ok(config) => {
            let warnings = warnings(&config);
            for w in &warnings {
                println!("warning: {file}: {}: {}", w.key, w.message);
            }
            match warnings.len() {
                0 => println!("ok: {file}"),
                n => println!("ok: {file} ({n} warning(s))"),
            }
            Ok(())
        }
    }
}
