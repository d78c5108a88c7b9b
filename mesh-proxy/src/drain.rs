//! The one drain primitive threaded through every listener and connection.
//!
//! A [`Trigger`] signals its [`Watch`]es and then waits until every clone of them is
//! dropped, which is how it knows that the connections holding them have finished.
//! Watches nest ([`Watch::child`]): a listener's watch fires when either the listener is
//! removed (its own trigger) or the whole proxy shuts down (the parent), and the parent's
//! trigger also waits for the children's connections, because a child holds its parent.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};

use futures::{future::select_all, task::AtomicWaker};
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
        woken_only(async move {
            let waits = signals.into_iter().map(|mut rx| {
                Box::pin(async move {
                    let _ = rx.wait_for(|draining| *draining).await;
                })
            });
            let _ = select_all(waits).await;
        })
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

/// Wraps a stop signal that sits in a `select!` next to a connection, so that the many
/// wakeups of the connection do not each poll the signal: the inner future is polled
/// only on the first poll and after its own waker fired. Correct for any future that
/// makes progress only when woken, as every well-behaved one does.
pub fn woken_only<F: Future>(fut: F) -> WokenOnly<F> {
    WokenOnly {
        fut,
        state: Arc::new(WakeState {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }),
    }
}

pin_project_lite::pin_project! {
    /// See [`woken_only`].
    pub struct WokenOnly<F> {
        #[pin]
        fut: F,
        state: Arc<WakeState>,
    }
}

#[doc(hidden)]
pub struct WakeState {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WakeState {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> Future for WokenOnly<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Registered on every poll (a wake takes the registration out) and before the
        // flag is read: a wake in between sets the flag and is seen now, or wakes the
        // task again.
        this.state.task.register(cx.waker());
        if !this.state.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(this.state.clone());
        this.fut.poll(&mut Context::from_waker(&waker))
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

    #[test]
    fn woken_only_polls_the_inner_future_only_after_its_own_wake() {
        use std::sync::atomic::AtomicUsize;

        /// Pending until `ready`; counts its polls and keeps the last waker.
        struct Probe {
            polls: Arc<AtomicUsize>,
            ready: Arc<AtomicBool>,
            waker: Arc<parking_lot::Mutex<Option<Waker>>>,
        }
        impl Future for Probe {
            type Output = ();
            fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                self.polls.fetch_add(1, Ordering::SeqCst);
                *self.waker.lock() = Some(cx.waker().clone());
                if self.ready.load(Ordering::SeqCst) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }
        }
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let inner_waker = Arc::new(parking_lot::Mutex::new(None::<Waker>));
        let mut fut = Box::pin(woken_only(Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: inner_waker.clone(),
        }));
        let task_wakes = Arc::new(Counter(AtomicUsize::new(0)));
        let task_waker = Waker::from(task_wakes.clone());
        let mut cx = Context::from_waker(&task_waker);

        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "the first poll reaches the inner future"
        );
        for _ in 0..10 {
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "other wakeups of the task skip it"
        );

        ready.store(true, Ordering::SeqCst);
        inner_waker.lock().take().unwrap().wake();
        assert_eq!(
            task_wakes.0.load(Ordering::SeqCst),
            1,
            "its wake wakes the task"
        );
        assert!(fut.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);

        struct Counter(AtomicUsize);
        impl Wake for Counter {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    #[tokio::test]
    async fn dropped_trigger_counts_as_signal() {
        let (trigger, watch) = channel();
        drop(trigger);
        watch.signaled().await;
    }
}
