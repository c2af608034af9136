//! Limits on unfinished uploads and replaced versions, checked by the
//! lifecycle and the sweeper for every store.

use std::time::Duration;

use super::api::{StoreError, StoreResult};

/// Limits on unfinished uploads.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// An unfinished upload with no SAVE or block for this long is removed.
    pub upload_expiry: Duration,
    /// Bytes planned by one user's unfinished uploads, at most.
    pub max_unfinished_bytes_per_user: u64,
    /// Unfinished uploads of one user, at most.
    pub max_unfinished_uploads_per_user: u64,
    /// How long a replaced version of a file stays readable (for downloads
    /// that began before the replace); removed by the sweeper after that,
    /// or at the key's next replace or DELETE.
    pub replaced_grace: Duration,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            upload_expiry: Duration::from_secs(86_400),
            max_unfinished_bytes_per_user: 64 << 30,
            max_unfinished_uploads_per_user: 1000,
            replaced_grace: Duration::from_secs(15 * 60),
        }
    }
}

impl StoreLimits {
    /// Whether a user with `count` unfinished uploads planning `planned`
    /// bytes may start one more of `size` bytes (the per-user caps, checked
    /// by every implementation at SAVE).
    pub fn admit_unfinished(&self, count: u64, planned: u64, size: u64) -> StoreResult<()> {
        if count >= self.max_unfinished_uploads_per_user {
            return Err(StoreError::Quota(format!(
                "{count} unfinished uploads already, the most one user may have; finish or delete one"
            )));
        }
        let total = planned.saturating_add(size);
        if total > self.max_unfinished_bytes_per_user {
            return Err(StoreError::Quota(format!(
                "unfinished uploads would total {total} bytes, above the {} one user may have",
                self.max_unfinished_bytes_per_user
            )));
        }
        Ok(())
    }

    /// How often the sweeper looks for idle uploads: a fraction of the
    /// expiry, so one is removed at most a quarter expiry late, but never
    /// more often than each second nor less often than each minute.
    pub fn sweep_period(&self) -> Duration {
        (self.upload_expiry / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_period_is_a_quarter_expiry_within_bounds() {
        let period = |secs| {
            StoreLimits {
                upload_expiry: Duration::from_secs(secs),
                ..StoreLimits::default()
            }
            .sweep_period()
        };
        assert_eq!(period(1), Duration::from_secs(1));
        assert_eq!(period(100), Duration::from_secs(25));
        assert_eq!(period(86_400), Duration::from_secs(60));
    }
}
