//! `plan watch`: follows a plan, printing each step's transitions, a progress bar per stage,
//! optionally each step's streamed output, and a heartbeat line while nothing changes (a real
//! `gkectl` rotation runs for tens of minutes: silence must not look like a hang).
//!
//! Times come from the plan, not from the watcher's clock: a transition is stamped with the
//! step's own `started_at` / `finished_at`, so replaying a finished plan prints when things
//! happened. The controller going away (a restart, an upgrade) is not the end of the watch:
//! the watcher reconnects with backoff for up to `--reconnect-for`, says so, and carries on
//! from the last state it printed (only transitions it has not printed yet follow).

use std::collections::BTreeMap;
use std::time::Duration;

use certfleet_common::model::{format_time, now};
use certfleet_common::proto as pb;

use super::super::CliError;
use super::super::conn::Conn;
use super::super::output::span;

/// Follows a plan: a progress bar per stage, each step's transitions, optionally its output.
pub struct PlanWatcher {
    with_output: bool,
    seen_states: BTreeMap<String, String>,
    seen_output: BTreeMap<String, usize>,
    last_bar: String,
    last: Option<pb::PlanInfo>,
}

/// When a step entered its current state, from its own record: the finish time for a final
/// state, the start time for one that has begun; `None` when the plan does not say.
fn event_time(s: &pb::StepInfo) -> Option<i64> {
    let t = match s.state.as_str() {
        "pending" => 0,
        "succeeded" | "failed" | "skipped" | "rolled_back" | "cancelled" | "aborted" => {
            s.finished_at
        }
        _ => s.started_at,
    };
    (t > 0).then_some(t)
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
        for line in self.changes(p) {
            println!("{line}");
        }
    }

    /// The lines describing what changed since the last update (and remembers it).
    pub fn changes(&mut self, p: &pb::PlanInfo) -> Vec<String> {
        let mut out = Vec::new();
        for s in &p.steps {
            if self.with_output {
                let seen = self.seen_output.entry(s.id.clone()).or_insert(0);
                for l in s.output.iter().skip(*seen) {
                    out.push(format!("    [{} {}] {l}", s.agent_name, s.id));
                }
                *seen = s.output.len();
            }
            if self.seen_states.get(&s.id) != Some(&s.state) {
                self.seen_states.insert(s.id.clone(), s.state.clone());
                if s.state != "pending" {
                    let took = if s.finished_at > 0 && s.started_at > 0 {
                        format!(" (took {})", span(s.finished_at - s.started_at))
                    } else {
                        String::new()
                    };
                    out.push(format!(
                        "{} {:<11} {:<14} {:<16} {}{}{took}",
                        format_time(event_time(s).unwrap_or_else(now)),
                        s.state,
                        s.agent_name,
                        s.action,
                        s.name,
                        if s.message.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", s.message)
                        }
                    ));
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
            out.push(bar.clone());
            self.last_bar = bar;
        }
        self.last = Some(p.clone());
        out
    }

    /// The heartbeat line at `at`: the plan's state and each running step with how long it has
    /// been running (from the step's own start time).
    pub fn heartbeat(&self, at: i64) -> Option<String> {
        let p = self.last.as_ref()?;
        let running: Vec<String> = p
            .steps
            .iter()
            .filter(|s| matches!(s.state.as_str(), "running" | "dispatched"))
            .map(|s| {
                let elapsed = if s.started_at > 0 {
                    format!(" for {}", span((at - s.started_at).max(0)))
                } else {
                    String::new()
                };
                format!("{} {} {}{elapsed}", s.agent_name, s.action, s.state)
            })
            .collect();
        Some(format!(
            "{} plan {} {}: {}",
            format_time(at),
            p.id,
            p.state,
            if running.is_empty() {
                "no step running".to_owned()
            } else {
                format!("still running: {}", running.join(", "))
            }
        ))
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

/// How `plan watch` follows a plan.
pub struct WatchOptions {
    /// Print each step's streamed output.
    pub output_lines: bool,
    /// A heartbeat line after this long without output.
    pub heartbeat: Duration,
    /// Keep reconnecting for this long after the controller went away.
    pub reconnect_for: Duration,
}

/// Whether a watch that failed with `s` is worth reconnecting: the controller went away or the
/// connection broke, not "no such plan" or "not allowed".
fn transient(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Internal
            | tonic::Code::DeadlineExceeded
    ) && !s.message().contains("state store")
}

fn is_final(state: &str) -> bool {
    matches!(
        state,
        "succeeded" | "failed" | "aborted" | "rolled_back" | "dry_run"
    )
}

/// Follows plan `id` to its end, reconnecting across controller restarts; an error when it
/// ended failed or aborted (exit 4).
pub async fn follow(conn: &Conn, id: &str, opts: &WatchOptions) -> anyhow::Result<()> {
    let mut watcher = PlanWatcher::new(opts.output_lines);
    // A lost connection: when it was first noticed, and the next wait.
    let mut lost: Option<(tokio::time::Instant, Duration)> = None;
    'connect: loop {
        let opened = conn
            .client()
            .watch_plan(pb::IdRequest { id: id.to_owned() })
            .await;
        let mut stream = match opened {
            Ok(s) => {
                if lost.take().is_some() {
                    eprintln!(
                        "{} reconnected to the controller at {}; resuming plan {id}",
                        format_time(now()),
                        conn.addr
                    );
                }
                s.into_inner()
            }
            Err(s) if transient(&s) && watcher.last().is_some() => {
                retry(conn, &mut lost, opts, &s).await?;
                continue 'connect;
            }
            Err(s) => return Err(conn.explain(s)),
        };
        let mut beat =
            tokio::time::interval_at(tokio::time::Instant::now() + opts.heartbeat, opts.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                m = stream.message() => match m {
                    Ok(Some(p)) => {
                        let lines = watcher.changes(&p);
                        if !lines.is_empty() {
                            for l in lines {
                                println!("{l}");
                            }
                            // Output resets the heartbeat: one line per quiet interval.
                            beat.reset();
                        }
                    }
                    Ok(None) => {
                        if watcher.last().is_some_and(|p| is_final(&p.state)) {
                            break 'connect;
                        }
                        // The stream ended before the plan did: the controller is stopping.
                        let s = tonic::Status::unavailable("the controller closed the watch");
                        retry(conn, &mut lost, opts, &s).await?;
                        continue 'connect;
                    }
                    Err(s) if transient(&s) => {
                        retry(conn, &mut lost, opts, &s).await?;
                        continue 'connect;
                    }
                    Err(s) => return Err(conn.explain(s)),
                },
                _ = beat.tick() => {
                    if let Some(l) = watcher.heartbeat(now()) {
                        println!("{l}");
                    }
                }
            }
        }
    }
    watcher.finish();
    if let Some(p) = watcher.last()
        && matches!(p.state.as_str(), "failed" | "aborted")
    {
        return Err(CliError::PlanFailed {
            id: p.id.clone(),
            state: p.state.clone(),
            message: p.message.clone(),
        }
        .into());
    }
    Ok(())
}

/// Waits before the next connection attempt (1 s, doubling to 10 s), saying so; gives up with
/// the explained error once `--reconnect-for` has passed since the connection was lost.
async fn retry(
    conn: &Conn,
    lost: &mut Option<(tokio::time::Instant, Duration)>,
    opts: &WatchOptions,
    s: &tonic::Status,
) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    let (since, wait) = lost.get_or_insert((started, Duration::from_secs(1)));
    if since.elapsed() >= opts.reconnect_for {
        let e = conn.explain(s.clone());
        return Err(e.context(format!(
            "gave up reconnecting after {}",
            humantime::format_duration(opts.reconnect_for)
        )));
    }
    eprintln!(
        "{} lost the controller at {} ({}); reconnecting in {}s",
        format_time(now()),
        conn.addr,
        s.message(),
        wait.as_secs()
    );
    tokio::time::sleep(*wait).await;
    *wait = (*wait * 2).min(Duration::from_secs(10));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: &str, state: &str, started: i64, finished: i64) -> pb::StepInfo {
        pb::StepInfo {
            id: id.into(),
            name: format!("renew {id}"),
            stage: "renew".into(),
            agent_name: "app1".into(),
            action: "files.renew".into(),
            state: state.into(),
            started_at: started,
            finished_at: finished,
            ..Default::default()
        }
    }

    #[test]
    fn replay_prints_the_plan_times_and_a_heartbeat_says_how_long_a_step_runs() {
        let t0 = 1_800_000_000;
        let plan = pb::PlanInfo {
            id: "p1".into(),
            state: "running".into(),
            steps: vec![
                step("s1", "succeeded", t0, t0 + 90),
                step("s2", "running", t0 + 90, 0),
            ],
            ..Default::default()
        };
        let mut w = PlanWatcher::new(false);
        let lines = w.changes(&plan);
        assert!(
            lines[0].starts_with(&format_time(t0 + 90)) && lines[0].contains("took 1m"),
            "{lines:?}"
        );
        assert!(lines[1].starts_with(&format_time(t0 + 90)), "{lines:?}");
        // Nothing changed: nothing printed again (a resumed watch goes on from here).
        assert!(w.changes(&plan).is_empty());
        let beat = w.heartbeat(t0 + 90 + 725).unwrap();
        assert!(
            beat.contains("still running: app1 files.renew running for 12m"),
            "{beat}"
        );
    }
}
