//! The one drain primitive threaded through every listener and connection.
//!
//! A [`Trigger`] signals its [`Watch`]es and then waits until every clone of them is
//! dropped, which is how it knows that the connections holding them have finished.
//! Watches nest ([`Watch::child`]): a listener's watch fires when either the listener is
//! removed (its own trigger) or the whole proxy shuts down (the parent), and the parent's
//! trigger also waits for the children's connections, because a child holds its parent.

use std::{future::Future, sync::Arc, time::Duration};

use futures::future::select_all;
use tokio::sync::{mpsc, watch};

/// Never sent: the channel only reports when every sender is gone.
enum Never {}

/// Signals draining and waits for the watchers to go away.
#[derive(Debug)]
pub struct Trigger {
    signal: watch::Sender<bool>,
    done: mpsc::Receiver<Never>,
}

/// Held by everything that must finish before a drain completes. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Watch {
    inner: Arc<WatchInner>,
}

#[derive(Debug)]
struct WatchInner {
    /// Own signal first, then the ancestors'.
    signals: Vec<watch::Receiver<bool>>,
    /// Dropping the last clone of the inner drops these, releasing the triggers.
    _alive: Vec<mpsc::Sender<Never>>,
    /// For [`Watch::never`]: keeps the signal's sender alive so it never fires.
    _keep: Option<watch::Sender<bool>>,
}

impl std::fmt::Debug for Never {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

/// A new, unsignaled trigger and its watch.
pub fn channel() -> (Trigger, Watch) {
    let (signal, rx) = watch::channel(false);
    let (alive, done) = mpsc::channel(1);
    (
        Trigger { signal, done },
        Watch {
            inner: Arc::new(WatchInner {
                signals: vec![rx],
                _alive: vec![alive],
                _keep: None,
            }),
        },
    )
}

// === impl Trigger ===

impl Trigger {
    /// Signals the watches without waiting (idempotent).
    pub fn signal(&self) {
        self.signal.send_replace(true);
    }

    /// Whether this trigger has been signaled.
    pub fn is_signaled(&self) -> bool {
        *self.signal.borrow()
    }

    /// Signals and waits until every watch (and every child watch) is dropped.
    pub async fn drain(mut self) {
        self.signal();
        while self.done.recv().await.is_some() {}
    }

    /// Signals and waits at most `deadline`; returns whether everything finished in time.
    /// Callers force-close what is left when this returns `false`.
    pub async fn drain_for(self, deadline: Duration) -> bool {
        tokio::time::timeout(deadline, self.drain()).await.is_ok()
    }
}

// === impl Watch ===

impl Watch {
    /// A watch that is never signaled (for tests and one-off tasks).
    pub fn never() -> Watch {
        let (signal, rx) = watch::channel(false);
        let (alive, _done) = mpsc::channel(1);
        Watch {
            inner: Arc::new(WatchInner {
                signals: vec![rx],
                _alive: vec![alive],
                _keep: Some(signal),
            }),
        }
    }

    /// Whether a drain has started for this watch or one of its ancestors.
    pub fn is_draining(&self) -> bool {
        self.inner.signals.iter().any(|rx| *rx.borrow())
    }

    /// Resolves once this watch or one of its ancestors is signaled. A dropped trigger
    /// counts as a signal, so tasks never outlive the thing that should stop them.
    pub fn signaled(&self) -> impl Future<Output = ()> + Send + 'static {
        let signals = self.inner.signals.clone();
        async move {
            let waits = signals.into_iter().map(|mut rx| {
                Box::pin(async move {
                    let _ = rx.wait_for(|draining| *draining).await;
                })
            });
            let _ = select_all(waits).await;
        }
    }

    /// A child trigger and watch: the child is signaled by its own trigger or by any of
    /// this watch's triggers, and this watch's triggers wait for the child's holders too.
    pub fn child(&self) -> (Trigger, Watch) {
        let (signal, rx) = watch::channel(false);
        let (alive, done) = mpsc::channel(1);
        let mut signals = Vec::with_capacity(self.inner.signals.len() + 1);
        signals.push(rx);
        signals.extend(self.inner.signals.iter().cloned());
        let mut alives = vec![alive];
        alives.extend(self.inner._alive.iter().cloned());
        (
            Trigger { signal, done },
            Watch {
                inner: Arc::new(WatchInner {
                    signals,
                    _alive: alives,
                    _keep: None,
                }),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_watchers() {
        let (trigger, watch) = channel();
        let held = watch.clone();
        drop(watch);
        let task = tokio::spawn(async move {
            held.signaled().await;
            assert!(held.is_draining());
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(held);
        });
        assert!(trigger.drain_for(Duration::from_secs(5)).await);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn drain_times_out_when_a_watcher_stays() {
        let (trigger, watch) = channel();
        assert!(!trigger.drain_for(Duration::from_millis(20)).await);
        assert!(watch.is_draining());
    }

    #[tokio::test]
    async fn child_fires_on_parent_and_parent_waits_for_child() {
        let (parent_trigger, parent) = channel();
        let (child_trigger, child) = parent.child();
        drop(parent);
        assert!(!child.is_draining());
        let waiter = tokio::spawn({
            let child = child.clone();
            async move { child.signaled().await }
        });
        parent_trigger.signal();
        waiter.await.unwrap();
        assert!(child.is_draining());
        // The parent drain is still blocked by the child's holder.
        let drained = tokio::spawn(parent_trigger.drain_for(Duration::from_secs(5)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!drained.is_finished());
        drop(child);
        drop(child_trigger);
        assert!(drained.await.unwrap());
    }

    #[tokio::test]
    async fn child_trigger_does_not_signal_parent() {
        let (_parent_trigger, parent) = channel();
        let (child_trigger, child) = parent.child();
        child_trigger.signal();
        child.signaled().await;
        assert!(!parent.is_draining());
    }

    #[tokio::test]
    async fn dropped_trigger_counts_as_signal() {
        let (trigger, watch) = channel();
        drop(trigger);
        watch.signaled().await;
    }
}
