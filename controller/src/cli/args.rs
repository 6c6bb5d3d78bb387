//! Value parsers shared by the command modules: bounded durations and counts refused at parse
//! time (exit code 2) with a message naming the limits, and `key=value` lists.

use std::time::Duration;

use anyhow::anyhow;
use certfleet_common::proto as pb;

/// `n` seconds.
pub const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `n` days.
pub const fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// Durations of "how far ahead" filters (expiring within …): up to 100 years.
pub const MAX_HORIZON: Duration = days(36_500);

/// A duration flag bounded to `[min, max]`, in humantime syntax; out-of-range and malformed
/// values are refused at parse time (exit code 2) with a message naming the limits.
pub fn duration_in(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let limits = format!(
            "between {} and {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        );
        let d = humantime::parse_duration(s.trim())
            .map_err(|e| format!("{s:?}: {e} (a duration such as 90s, 1h or 30d, {limits})"))?;
        if d < min || d > max {
            return Err(format!("{s:?} is out of range: must be {limits}"));
        }
        Ok(d)
    }
}

/// A count flag bounded to `[min, max]`; a message naming the limits otherwise (exit code 2).
pub fn count_in<T: TryFrom<u64> + Clone + Send + Sync + 'static>(
    min: u64,
    max: u64,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        s.trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| format!("{s:?} is not a whole number between {min} and {max}"))
    }
}

/// Parses `k=v` labels.
pub fn parse_labels(labels: &[String]) -> anyhow::Result<Vec<pb::Label>> {
    labels
        .iter()
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| anyhow!("label {l:?} is not key=value"))?;
            Ok(pb::Label {
                key: k.to_owned(),
                value: v.to_owned(),
            })
        })
        .collect()
}
