//! `plan watch`: follows a plan, printing each step's transitions, a progress bar per stage,
//! and optionally each step's streamed output.

use std::collections::BTreeMap;

use certfleet_common::model::{format_time, now};
use certfleet_common::proto as pb;

/// Follows a plan: a progress bar per stage, each step's transitions, optionally its output.
pub struct PlanWatcher {
    with_output: bool,
    seen_states: BTreeMap<String, String>,
    seen_output: BTreeMap<String, usize>,
    last_bar: String,
    last: Option<pb::PlanInfo>,
}

impl PlanWatcher {
    /// A new watcher.
    pub fn new(with_output: bool) -> Self {
        PlanWatcher {
            with_output,
            seen_states: BTreeMap::new(),
            seen_output: BTreeMap::new(),
            last_bar: String::new(),
            last: None,
        }
    }

    /// Prints what changed.
    pub fn update(&mut self, p: &pb::PlanInfo) {
        for s in &p.steps {
            if self.with_output {
                let seen = self.seen_output.entry(s.id.clone()).or_insert(0);
                for l in s.output.iter().skip(*seen) {
                    println!("    [{} {}] {l}", s.agent_name, s.id);
                }
                *seen = s.output.len();
            }
            if self.seen_states.get(&s.id) != Some(&s.state) {
                self.seen_states.insert(s.id.clone(), s.state.clone());
                if s.state != "pending" {
                    println!(
                        "{} {:<11} {:<14} {:<16} {}{}",
                        format_time(now()),
                        s.state,
                        s.agent_name,
                        s.action,
                        s.name,
                        if s.message.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", s.message)
                        }
                    );
                }
            }
        }
        let mut stages: Vec<(String, usize, usize)> = Vec::new();
        for s in &p.steps {
            match stages.iter_mut().find(|(n, _, _)| *n == s.stage) {
                Some(e) => {
                    e.2 += 1;
                    if s.state == "succeeded" {
                        e.1 += 1;
                    }
                }
                None => stages.push((s.stage.clone(), usize::from(s.state == "succeeded"), 1)),
            }
        }
        let bars: Vec<String> = stages
            .iter()
            .map(|(n, done, total)| {
                let width = 10;
                let filled = done * width / (*total).max(1);
                format!(
                    "{n} [{}{}] {done}/{total}",
                    "#".repeat(filled),
                    "-".repeat(width - filled)
                )
            })
            .collect();
        let bar = format!(
            "  plan {} {}: {}{}",
            p.id,
            p.state,
            bars.join("  "),
            if p.message.is_empty() {
                String::new()
            } else {
                format!("  ({})", p.message)
            }
        );
        if bar != self.last_bar {
            println!("{bar}");
            self.last_bar = bar;
        }
        self.last = Some(p.clone());
    }

    /// The last state of the plan seen.
    pub fn last(&self) -> Option<&pb::PlanInfo> {
        self.last.as_ref()
    }

    /// Final summary.
    pub fn finish(&self) {
        if let Some(p) = &self.last {
            let ok = p.steps.iter().filter(|s| s.state == "succeeded").count();
            println!(
                "plan {} finished {}: {ok}/{} steps succeeded",
                p.id,
                p.state,
                p.steps.len()
            );
        }
    }
}
