//! A one-shot reply slot for a thread that blocks until another thread answers it: how a
//! session waits for the committer's acknowledgement.
//!
//! A bounded(1) channel would do the same, but its receiver spins and calls `sched_yield`
//! several times before it sleeps. On a busy machine with few cores every yield is a context
//! switch to some other thread and back, on a wait that is one fdatasync (or a replication
//! round trip) long and never ends within a spin. This slot parks on its condition variable at
//! once.

use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

/// The state of the one value that passes.
enum Slot<T> {
    Empty,
    Sent(T),
    /// The sender was dropped without sending.
    Closed,
}

struct Shared<T> {
    slot: Mutex<Slot<T>>,
    ready: Condvar,
}

/// The answering side. Dropping it unsent wakes the waiter with `None`.
pub struct ReplyTx<T> {
    shared: Option<Arc<Shared<T>>>,
}

/// The waiting side.
pub struct ReplyRx<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for ReplyTx<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.shared.is_some() { "ReplyTx(unanswered)" } else { "ReplyTx(answered)" })
    }
}

impl<T> std::fmt::Debug for ReplyRx<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplyRx")
    }
}

/// A new reply slot.
pub fn reply_slot<T>() -> (ReplyTx<T>, ReplyRx<T>) {
    let shared = Arc::new(Shared { slot: Mutex::new(Slot::Empty), ready: Condvar::new() });
    (ReplyTx { shared: Some(Arc::clone(&shared)) }, ReplyRx { shared })
}

impl<T> ReplyTx<T> {
    /// Answers, waking the waiter. A waiter that is gone is not an error: the value is dropped.
    pub fn send(mut self, value: T) {
        if let Some(shared) = self.shared.take() {
            *shared.slot.lock() = Slot::Sent(value);
            shared.ready.notify_one();
        }
    }
}

impl<T> Drop for ReplyTx<T> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            *shared.slot.lock() = Slot::Closed;
            shared.ready.notify_one();
        }
    }
}

impl<T> ReplyRx<T> {
    /// Blocks until the answer arrives; `None` when the sender was dropped without one.
    pub fn recv(self) -> Option<T> {
        let mut slot = self.shared.slot.lock();
        loop {
            match std::mem::replace(&mut *slot, Slot::Closed) {
                Slot::Sent(value) => return Some(value),
                Slot::Closed => return None,
                Slot::Empty => {
                    *slot = Slot::Empty;
                    self.shared.ready.wait(&mut slot);
                }
            }
        }
    }

    /// The answer if it has arrived, without blocking; `Err(self)` to wait again later.
    pub fn try_recv(self) -> Result<Option<T>, ReplyRx<T>> {
        let mut slot = self.shared.slot.lock();
        match std::mem::replace(&mut *slot, Slot::Closed) {
            Slot::Sent(value) => Ok(Some(value)),
            Slot::Closed => Ok(None),
            Slot::Empty => {
                *slot = Slot::Empty;
                drop(slot);
                Err(self)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_answer_reaches_a_waiting_thread() {
        let (tx, rx) = reply_slot::<u32>();
        let waiter = std::thread::spawn(move || rx.recv());
        std::thread::sleep(Duration::from_millis(20));
        tx.send(7);
        assert_eq!(waiter.join().unwrap(), Some(7));
    }

    #[test]
    fn an_answer_sent_before_the_wait_is_kept() {
        let (tx, rx) = reply_slot::<&str>();
        tx.send("done");
        assert_eq!(rx.recv(), Some("done"));
    }

    #[test]
    fn a_dropped_sender_ends_the_wait_empty() {
        let (tx, rx) = reply_slot::<u32>();
        let waiter = std::thread::spawn(move || rx.recv());
        std::thread::sleep(Duration::from_millis(20));
        drop(tx);
        assert_eq!(waiter.join().unwrap(), None);
    }

    #[test]
    fn try_recv_hands_the_receiver_back_until_answered() {
        let (tx, rx) = reply_slot::<u32>();
        let rx = rx.try_recv().expect_err("nothing sent yet");
        tx.send(3);
        assert_eq!(rx.try_recv().ok(), Some(Some(3)));
        let (tx, rx) = reply_slot::<u32>();
        drop(tx);
        assert_eq!(rx.try_recv().ok(), Some(None));
    }

    #[test]
    fn sending_to_a_receiver_that_left_drops_the_value() {
        let (tx, rx) = reply_slot::<Arc<()>>();
        let value = Arc::new(());
        drop(rx);
        tx.send(Arc::clone(&value));
        assert_eq!(Arc::strong_count(&value), 1);
    }
}
