//! The push queue: connections waiting for a push, each at most once, with their pending
//! pushes merged (Istio's `PushQueue`). A connection being pushed is not handed out again
//! until its push is done; a push that arrives meanwhile waits, merged, and is handed out
//! next. So a burst of changes costs each proxy at most one push in flight and one pending.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::PushRequest;
use crate::xds::ConnId;

#[derive(Debug, Default)]
struct Inner {
    order: VecDeque<ConnId>,
    pending: HashMap<ConnId, PushRequest>,
    processing: HashSet<ConnId>,
}

#[derive(Debug, Default)]
pub struct PushQueue {
    inner: Mutex<Inner>,
    notify: Notify,
}

/// Marks a dequeued connection's push done when dropped (also on error or cancellation).
#[derive(Debug)]
pub struct Done {
    queue: Arc<PushQueue>,
    id: ConnId,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.queue.mark_done(self.id);
    }
}

impl PushQueue {
    pub fn new() -> Arc<PushQueue> {
        Arc::new(PushQueue::default())
    }

    /// Queues a push for `id`, merging with one already pending.
    pub fn enqueue(&self, id: ConnId, req: PushRequest) {
        let mut inner = self.inner.lock();
        if let Some(pending) = inner.pending.get_mut(&id) {
            pending.merge(req);
            return;
        }
        inner.pending.insert(id, req);
        if !inner.processing.contains(&id) {
            inner.order.push_back(id);
            drop(inner);
            self.notify.notify_one();
        }
    }

    /// The next connection to push, waiting for one.
    pub async fn dequeue(self: &Arc<Self>) -> (ConnId, PushRequest, Done) {
        loop {
            let notified = self.notify.notified();
            if let Some(next) = self.try_dequeue() {
                return next;
            }
            notified.await;
        }
    }

    fn try_dequeue(self: &Arc<Self>) -> Option<(ConnId, PushRequest, Done)> {
        let mut inner = self.inner.lock();
        while let Some(id) = inner.order.pop_front() {
            if let Some(req) = inner.pending.remove(&id) {
                inner.processing.insert(id);
                let done = Done {
                    queue: self.clone(),
                    id,
                };
                return Some((id, req, done));
            }
        }
        None
    }

    fn mark_done(&self, id: ConnId) {
        let mut inner = self.inner.lock();
        inner.processing.remove(&id);
        if inner.pending.contains_key(&id) {
            inner.order.push_back(id);
            drop(inner);
            self.notify.notify_one();
        }
    }

    /// Connections waiting (not counting those being pushed).
    pub fn pending(&self) -> usize {
        self.inner.lock().pending.len()
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    fn req(full: bool) -> PushRequest {
        PushRequest::new(full, Instant::now(), "test")
    }

    #[tokio::test]
    async fn merges_and_holds_back_while_processing() {
        let q = PushQueue::new();
        q.enqueue(1, req(false));
        q.enqueue(2, req(false));
        q.enqueue(1, req(true));
        let (id, r, done1) = q.dequeue().await;
        assert_eq!(id, 1);
        assert!(r.full, "merged full + eds is full");
        // 1 is being processed: a new push waits until it is done.
        q.enqueue(1, req(false));
        let (id, _, done2) = q.dequeue().await;
        assert_eq!(id, 2);
        assert!(q.try_dequeue().is_none());
        drop(done1);
        let (id, r, _done) = q.dequeue().await;
        assert_eq!(id, 1);
        assert!(!r.full);
        drop(done2);
        assert_eq!(q.pending(), 0);
    }
}
