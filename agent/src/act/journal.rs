//! The step journal: `STATE_DIR/journal.jsonl`, one finished step per line.
//!
//! Appended and fsynced after each step, read when a step arrives. A step the controller sends
//! again (it lost the answer, or it restarted) is answered from here instead of running twice.
//! A torn last line (crash mid-append) is ignored: that step's effect is guarded by its own
//! backup and verification, and the controller re-sends it.

use std::io::{BufRead, Write};

use certfleet_common::proto as pb;
use serde::{Deserialize, Serialize};

use crate::state::StateDir;

#[derive(Serialize, Deserialize)]
struct Entry {
    step_id: String,
    ok: bool,
    message: String,
    details_json: String,
    at: i64,
}

fn path(state: &StateDir) -> std::path::PathBuf {
    state.path().join("journal.jsonl")
}

/// The journaled result of `step_id`, if it ran.
pub fn lookup(state: &StateDir, step_id: &str) -> Option<pb::StepResult> {
    let f = std::fs::File::open(path(state)).ok()?;
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Entry>(&l).ok())
        .filter(|e| e.step_id == step_id)
        .last()
        .map(|e| pb::StepResult {
            step_id: e.step_id,
            ok: e.ok,
            message: e.message,
            details_json: e.details_json,
            from_journal: true,
        })
}

/// Ids of every journaled step (sent in the hello).
pub fn step_ids(state: &StateDir) -> Vec<String> {
    let Ok(f) = std::fs::File::open(path(state)) else {
        return Vec::new();
    };
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Entry>(&l).ok())
        .map(|e| e.step_id)
        .collect()
}

/// Appends a result durably.
pub fn record(state: &StateDir, r: &pb::StepResult) -> std::io::Result<()> {
    let p = path(state);
    // After a torn append, start on a fresh line so this entry is not glued to the fragment.
    let torn = std::fs::read(&p)
        .map(|b| !b.is_empty() && !b.ends_with(b"\n"))
        .unwrap_or(false);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)?;
    if torn {
        f.write_all(b"\n")?;
    }
    let e = Entry {
        step_id: r.step_id.clone(),
        ok: r.ok,
        message: r.message.clone(),
        details_json: r.details_json.clone(),
        at: certfleet_common::model::now(),
    };
    writeln!(f, "{}", serde_json::to_string(&e).expect("serialize"))?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_finds_and_survives_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let st = StateDir(dir.path().to_path_buf());
        let r = pb::StepResult {
            step_id: "p1-1".into(),
            ok: true,
            message: "done".into(),
            details_json: "{}".into(),
            from_journal: false,
        };
        record(&st, &r).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(path(&st))
            .unwrap()
            .write_all(b"{\"step_id\":\"p1-2\",\"ok\":tr")
            .unwrap();
        let found = lookup(&st, "p1-1").unwrap();
        assert!(found.ok && found.from_journal);
        assert!(lookup(&st, "p1-2").is_none());
        assert_eq!(step_ids(&st), vec!["p1-1".to_owned()]);
        let r3 = pb::StepResult {
            step_id: "p1-3".into(),
            ..r
        };
        record(&st, &r3).unwrap();
        assert!(
            lookup(&st, "p1-3").is_some(),
            "an entry after a torn line is readable"
        );
    }
}
