//! Maintenance windows: a cron expression (UTC) for the start and a length. Used by the
//! engine (dispatch only inside the window) and by policies (renew outside it when the next
//! window comes too late), so it lives with the plans and imports neither.

/// Whether `now` is inside the window that starts at the cron times of `window` and lasts
/// `window_secs` (an empty window is always open).
pub fn in_window(window: &str, window_secs: u64, now: i64) -> Result<bool, String> {
    if window.trim().is_empty() {
        return Ok(true);
    }
    let cron: croner::Cron = window
        .parse()
        .map_err(|e| format!("window {window:?}: {e}"))?;
    // The most recent window start at or before now: search forward from now - window length.
    let from = chrono_from(now - window_secs as i64);
    match cron.find_next_occurrence(&from, true) {
        Ok(start) => Ok(start.timestamp() <= now),
        Err(e) => Err(format!("window {window:?}: {e}")),
    }
}

/// The next window start after `now`.
pub fn next_window(window: &str, now: i64) -> Option<i64> {
    let cron: croner::Cron = window.parse().ok()?;
    cron.find_next_occurrence(&chrono_from(now), false)
        .ok()
        .map(|t| t.timestamp())
}

fn chrono_from(secs: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::<chrono::Utc>::from_timestamp(secs, 0).unwrap_or_default()
}
