//! Limits on one agent's inventory report, shared by both ends of the link so that they agree
//! on what is over them: the controller announces them in its welcome and refuses a report over
//! them whoever sent it; the agent checks its report against them before sending and sends a
//! problem instead (the controller's store and memory stay bounded by one agent's share).

use crate::proto as pb;

/// Largest message an agent sends to a controller that announces no limit (an older one):
/// tonic's default decoding limit on the other side.
pub const LEGACY_MAX_REPORT_BYTES: usize = 4 << 20;

/// A report over the limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverLimit {
    /// The agent holds more certificates than one agent may.
    #[error("{count} certificates, more than the limit of {limit} per agent")]
    Certificates {
        /// Certificates in the inventory.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// One certificate was found at more locations than allowed.
    #[error("certificate {fingerprint} at {count} locations, more than the limit of {limit}")]
    Locations {
        /// SHA-256 fingerprint of the certificate.
        fingerprint: String,
        /// Its locations.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The encoded report is larger than the link accepts.
    #[error("report of {size} bytes, more than the limit of {limit} bytes")]
    Bytes {
        /// Encoded size with room for the envelope.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// What one agent may report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportLimits {
    /// Largest message an agent may send (gRPC decoding limit on the link).
    pub max_report_bytes: usize,
    /// Certificates one agent may hold in the inventory.
    pub max_certificates: usize,
    /// Locations one certificate may be reported at.
    pub max_locations: usize,
}

impl Default for ReportLimits {
    /// The controller's defaults.
    fn default() -> Self {
        ReportLimits {
            max_report_bytes: 32 << 20,
            max_certificates: 20_000,
            max_locations: 256,
        }
    }
}

impl ReportLimits {
    /// The limits a controller announced in its welcome; a zero (an older controller that
    /// announces none) means tonic's default message size and no count limit.
    pub fn from_welcome(w: &pb::Welcome) -> Self {
        let or = |v: u64, default: usize| {
            if v == 0 {
                default
            } else {
                usize::try_from(v).unwrap_or(usize::MAX)
            }
        };
        ReportLimits {
            max_report_bytes: or(w.max_report_bytes, LEGACY_MAX_REPORT_BYTES),
            max_certificates: or(u64::from(w.max_certificates), usize::MAX),
            max_locations: or(u64::from(w.max_locations), usize::MAX),
        }
    }

    /// Whether the controller that sent `w` assembles a report sent in chunks: every controller
    /// that announces its limits does; one that announces none (older) takes a report whole.
    pub fn assembles_chunks(w: &pb::Welcome) -> bool {
        w.max_report_bytes != 0
    }

    /// Why `report` (of an inventory holding `total` certificates; the report itself may hold
    /// only the changes) is over the limits, if it is.
    pub fn check(&self, total: usize, report: &pb::InventoryReport) -> Result<(), OverLimit> {
        use prost::Message as _;
        self.check_counts(total, report)?;
        // Room for the envelope (message kind and length prefix).
        let size = report.encoded_len() + 16;
        if size > self.max_report_bytes {
            return Err(OverLimit::Bytes {
                size,
                limit: self.max_report_bytes,
            });
        }
        Ok(())
    }

    /// [`Self::check`] without the size of the message: an agent splits a large report into
    /// chunks of one generation, each under the size limit.
    pub fn check_counts(
        &self,
        total: usize,
        report: &pb::InventoryReport,
    ) -> Result<(), OverLimit> {
        self.check_records(
            total,
            report
                .certificates
                .iter()
                .map(|c| (c.fingerprint_sha256.as_str(), c.locations.len())),
        )
    }

    /// [`Self::check_counts`] of a report whose certificates are given as (fingerprint, number
    /// of locations): an agent checks its scan's records before it converts them.
    pub fn check_records<'a>(
        &self,
        total: usize,
        sent: impl ExactSizeIterator<Item = (&'a str, usize)>,
    ) -> Result<(), OverLimit> {
        let total = total.max(sent.len());
        if total > self.max_certificates {
            return Err(OverLimit::Certificates {
                count: total,
                limit: self.max_certificates,
            });
        }
        for (fingerprint, count) in sent {
            if count > self.max_locations {
                return Err(OverLimit::Locations {
                    fingerprint: fingerprint.to_owned(),
                    count,
                    limit: self.max_locations,
                });
            }
        }
        Ok(())
    }
}

/// Connections a controller is assumed to take per second when it spreads a fleet's reconnects
/// (see [`reconnect_spread`]). Measured with `certfleet-loadgen` on a 2-core machine shared with
/// the load generator: 10,000 agents connected in 6.8 s (about 1,500/s, TLS, hello and full
/// report); a third of that leaves room for the reports and the queries meanwhile.
pub const RECONNECTS_PER_SECOND: usize = 500;

/// The longest reconnect spread a controller announces.
pub const MAX_RECONNECT_SPREAD_SECS: u32 = 60;

/// The reconnect spread (seconds) a controller with `connected` agents announces: long enough
/// for all of them to come back at [`RECONNECTS_PER_SECOND`], at least 1 s (the agent's own
/// first backoff step), at most [`MAX_RECONNECT_SPREAD_SECS`].
pub fn reconnect_spread(connected: usize) -> u32 {
    u32::try_from(connected.div_ceil(RECONNECTS_PER_SECOND))
        .unwrap_or(u32::MAX)
        .clamp(1, MAX_RECONNECT_SPREAD_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(certs: usize, locations: usize) -> pb::InventoryReport {
        pb::InventoryReport {
            certificates: (0..certs)
                .map(|i| pb::CertificateRecord {
                    fingerprint_sha256: format!("{i:064x}"),
                    locations: (0..locations).map(|_| pb::Location::default()).collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn each_limit_is_named_and_a_report_within_them_passes() {
        let l = ReportLimits {
            max_report_bytes: 1 << 20,
            max_certificates: 3,
            max_locations: 2,
        };
        assert_eq!(l.check(3, &report(3, 2)), Ok(()));
        assert_eq!(
            l.check(5, &report(1, 1)).unwrap_err().to_string(),
            "5 certificates, more than the limit of 3 per agent"
        );
        assert!(matches!(
            l.check(1, &report(1, 3)),
            Err(OverLimit::Locations {
                count: 3,
                limit: 2,
                ..
            })
        ));
        let small = ReportLimits {
            max_report_bytes: 64,
            ..l
        };
        assert!(matches!(
            small.check(2, &report(2, 2)),
            Err(OverLimit::Bytes { limit: 64, .. })
        ));
        let w = pb::Welcome::default();
        assert_eq!(
            ReportLimits::from_welcome(&w).max_report_bytes,
            LEGACY_MAX_REPORT_BYTES
        );
    }

    #[test]
    fn the_reconnect_spread_grows_with_the_fleet_within_bounds() {
        assert_eq!(reconnect_spread(0), 1);
        assert_eq!(reconnect_spread(1), 1);
        assert_eq!(reconnect_spread(500), 1);
        assert_eq!(reconnect_spread(501), 2);
        assert_eq!(reconnect_spread(10_000), 20);
        assert_eq!(reconnect_spread(1_000_000), MAX_RECONNECT_SPREAD_SECS);
    }
}
