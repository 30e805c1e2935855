use serde::Deserialize;

/// `[bus]` section, shared by every service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// AMQP URL; credentials in the URL are for lab use (`guest` on loopback).
    #[serde(default = "default_url")]
    pub url: String,
    /// Prefix of every exchange and queue name, so several deployments (or test runs)
    /// can share one broker.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Number of command partitions. A group's commands always go to the same
    /// partition, so they apply in order while partitions apply in parallel.
    #[serde(default = "default_partitions")]
    pub command_partitions: u16,
    /// Unacked deliveries per consumer.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Deliveries of one message before it is dead-lettered as poison.
    #[serde(default = "default_delivery_limit")]
    pub delivery_limit: u32,
    /// Seconds to wait for a publisher confirm.
    #[serde(default = "default_confirm_timeout")]
    pub confirm_timeout_seconds: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            url: default_url(),
            namespace: default_namespace(),
            command_partitions: default_partitions(),
            prefetch: default_prefetch(),
            delivery_limit: default_delivery_limit(),
            confirm_timeout_seconds: default_confirm_timeout(),
        }
    }
}

fn default_url() -> String {
    "amqp://guest:guest@127.0.0.1:5672/%2f".into()
}
fn default_namespace() -> String {
    "gwb".into()
}
fn default_partitions() -> u16 {
    4
}
fn default_prefetch() -> u16 {
    256
}
fn default_delivery_limit() -> u32 {
    20
}
fn default_confirm_timeout() -> u64 {
    30
}

impl BusConfig {
    /// The URL with any password replaced, for logs and errors.
    pub fn redacted_url(&self) -> String {
        match (self.url.find("://"), self.url.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                let userinfo = &self.url[scheme_end + 3..at];
                let user = userinfo.split(':').next().unwrap_or_default();
                format!("{}{}:***{}", &self.url[..scheme_end + 3], user, &self.url[at..])
            }
            _ => self.url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn password_redacted() {
        let c = super::BusConfig { url: "amqp://u:p4ss@h:5672/%2f".into(), ..Default::default() };
        assert_eq!(c.redacted_url(), "amqp://u:***@h:5672/%2f");
    }
}
