//! Change-notification subscriptions (graph-api.md §6): hints that trigger a delta
//! round early; delta stays the source of truth.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gwb_runtime::secret::Secret;
use serde::Deserialize;

/// Graph's maximum subscription lifetime for users and groups: 41,760 minutes.
pub const MAX_SUBSCRIPTION_LIFETIME: Duration = Duration::from_secs(41_760 * 60);

/// A subscription request.
pub struct NewSubscription<'a> {
    /// `/groups` or `/users`.
    pub resource: &'a str,
    /// `updated,deleted`: the change types Graph supports for users and groups.
    pub change_type: &'a str,
    pub notification_url: &'a str,
    pub lifecycle_notification_url: Option<&'a str>,
    /// Sent back in every notification, so the receiver can tell Graph's posts from
    /// anyone else's.
    pub client_state: &'a Secret,
    pub expiration: SystemTime,
}

/// What Graph answers about a subscription (only the fields the collector uses).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: String,
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub expiration_date_time: String,
}

/// `2024-05-01T12:34:56Z` (UTC, whole seconds), the form Graph takes for
/// `expirationDateTime`.
pub fn rfc3339(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(1_714_566_896_900)), "2024-05-01T12:34:56Z");
    }
}
