//! `mailgate bounce classify`: what mailgate makes of a failure reply or a
//! bounce message, with the rule that decided, so an operator can check a
//! provider's wording against `crates/core/data/bounce-rules.txt`.
//! Imports `report::bounce` and `mailgate-core` only; needs no config.

use std::path::PathBuf;

use anyhow::Context;
use mailgate_core::bounce;
use serde_json::{Value, json};

use crate::report::bounce::{Bounced, read};

pub fn classify(replies: &[String], files: &[PathBuf], as_json: bool) -> anyhow::Result<()> {
    let mut results: Vec<Value> = Vec::new();
    for r in replies {
        let c = bounce::classify_reply(r);
        results.push(json!({
            "reply": r,
            "status": bounce::find_status(r).map(|s| s.to_string()),
            "kind": c.map(|c| c.kind.as_str()),
            "category": c.map(|c| c.category.as_str()),
            "rule": c.map(|c| c.rule),
        }));
    }
    for f in files {
        let raw = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        let found = read(&raw);
        if found.is_empty() {
            results.push(json!({"file": f.display().to_string(), "recipient": null, "kind": null, "category": null}));
        }
        for b in found {
            results.push(file_result(f, &b));
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&json!({ "results": results }))?);
        return Ok(());
    }
    for r in &results {
        let what = r["reply"].as_str().map(str::to_string).unwrap_or_else(|| {
            format!("{} {}", r["file"].as_str().unwrap_or(""), r["recipient"].as_str().unwrap_or("(no recipient found)"))
        });
        match (r["kind"].as_str(), r["category"].as_str()) {
            (Some(kind), Some(category)) => {
                let status = r["status"].as_str().unwrap_or("-");
                println!("{what}: {kind} {category} (status {status}, rule line {})", r["rule"]);
            }
            _ => println!("{what}: not a failure"),
        }
    }
    Ok(())
}

fn file_result(f: &std::path::Path, b: &Bounced) -> Value {
    json!({
        "file": f.display().to_string(),
        "recipient": b.recipient,
        "action": b.action,
        "status": b.status.map(|s| s.to_string()),
        "diagnostic": b.diagnostic,
        "remote_mta": b.remote_mta,
        "format": b.format,
        "kind": b.classification.map(|c| c.kind.as_str()),
        "category": b.classification.map(|c| c.category.as_str()),
        "rule": b.classification.map(|c| c.rule),
    })
}
