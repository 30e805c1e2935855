//! Shared server state.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::assertion::RegisteredCertificate;
use crate::auth::TokenStore;
use crate::config::{Settings, SimConfig};
use crate::delta::Rounds;
use crate::faults::{Endpoint, FaultKind, FaultQueue};
use crate::stats::RequestStats;
use crate::store::Tenant;
use crate::subscriptions::{Notice, Subscriptions};

pub struct App {
    pub config: SimConfig,
    pub settings: RwLock<Settings>,
    pub tenant: RwLock<Tenant>,
    pub rounds: Mutex<Rounds>,
    pub tokens: Mutex<TokenStore>,
    pub faults: Mutex<FaultQueue>,
    pub stats: Mutex<RequestStats>,
    /// Certificates registered on the app for client assertions.
    pub certificates: Mutex<Vec<RegisteredCertificate>>,
    pub subscriptions: Mutex<Subscriptions>,
    /// Committed changes on their way to the notification deliverer.
    pub notices: mpsc::UnboundedSender<Vec<Notice>>,
    /// Client for validation handshakes and notification deliveries.
    pub http: reqwest::Client,
}

// A panic while a lock is held cannot leave these structures half-updated in a way
// that matters more than refusing all further requests would, so poisoning is ignored.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

impl App {
    pub fn new(
        config: SimConfig,
        tenant: Tenant,
        certificates: Vec<RegisteredCertificate>,
        notices: mpsc::UnboundedSender<Vec<Notice>>,
        http: reqwest::Client,
    ) -> App {
        App {
            certificates: Mutex::new(certificates),
            subscriptions: Mutex::new(Subscriptions::default()),
            notices,
            http,
            settings: RwLock::new(Settings::from_config(&config)),
            config,
            tenant: RwLock::new(tenant),
            rounds: Mutex::new(Rounds::default()),
            tokens: Mutex::new(TokenStore::default()),
            faults: Mutex::new(FaultQueue::default()),
            stats: Mutex::new(RequestStats::default()),
        }
    }

    pub fn settings(&self) -> Settings {
        read(&self.settings).clone()
    }

    /// How long each delta page takes to serve (`paging.pageDelayMs`).
    pub fn page_delay(&self) -> Duration {
        Duration::from_millis(read(&self.settings).paging.page_delay_ms)
    }

    pub fn round_ttl(&self) -> Duration {
        Duration::from_secs(read(&self.settings).round_ttl_secs)
    }

    pub fn take_fault(&self, endpoint: Endpoint) -> Option<FaultKind> {
        let fault = lock(&self.faults).take(endpoint);
        if let Some(f) = &fault {
            tracing::info!(?endpoint, fault = ?f, "injecting fault");
        }
        fault
    }
}
