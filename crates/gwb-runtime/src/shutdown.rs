//! Process shutdown: SIGTERM or Ctrl-C, broadcast to every task through a watch channel.

use tokio::sync::watch;

/// A cloneable shutdown signal. `triggered()` resolves once shutdown starts.
#[derive(Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

/// The sending half, kept by whoever decides to stop (signal handler, tests).
pub struct ShutdownTrigger {
    sender: watch::Sender<bool>,
}

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (ShutdownTrigger { sender }, Shutdown { receiver })
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.sender.send(true);
    }
}

impl Shutdown {
    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }

    pub async fn triggered(&self) {
        let mut receiver = self.receiver.clone();
        // An Err means the trigger was dropped: treat it as shutdown too.
        let _ = receiver.wait_for(|stop| *stop).await;
    }
}

/// Shutdown on SIGTERM or Ctrl-C.
pub fn on_signals() -> Shutdown {
    let (trigger, shutdown) = channel();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    trigger.trigger();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        trigger.trigger();
    });
    shutdown
}
