//! The committer's inbox: two bounded lanes (requests from sessions, WAL slices from a
//! replica's receiver) under one lock, with one waiting receiver.
//!
//! A crossbeam channel did this job before, and cost a context switch on most hand-offs: its
//! sender wakes the receiver while still holding the channel's internal lock, and on a machine
//! with few cores the woken committer often runs at once on the sender's core, finds the lock
//! taken, sleeps again, and has to be woken a second time. Here a sender wakes the receiver only
//! after letting go of the lock, and the receiver parks at once instead of spinning first.
//!
//! Invariants:
//! - A lane never holds more than its capacity; a sender waits (or, with `try_send`, gets its
//!   item back) while its lane is full.
//! - Once closed, every send fails with the item and nothing is received; what was queued is
//!   dropped at close, so waiting repliers see their reply slot closed.

use std::collections::VecDeque;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// Which lane an item travels in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Requests: commits, checkpoints, restore points, shutdown. Taken first.
    Requests,
    /// A replica's WAL slices, and its receiver's question where a new stream starts
    /// (behind the slices queued before it).
    Wal,
}

/// Why a send failed; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendError<T> {
    /// The lane is full (only from [`Inbox::try_send`]).
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

/// Why [`Inbox::recv_batch`] returned nothing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RecvError {
    /// Nothing arrived before the deadline.
    Timeout,
    /// The inbox is closed.
    Closed,
}

struct Lanes<T> {
    requests: VecDeque<T>,
    wal: VecDeque<T>,
    closed: bool,
    /// Senders waiting for room, so the receiver wakes them only when there are any.
    waiting_for_room: usize,
}

/// Two bounded lanes with one receiver. See the module docs.
pub(crate) struct Inbox<T> {
    lanes: Mutex<Lanes<T>>,
    request_capacity: usize,
    wal_capacity: usize,
    /// The receiver waits here for an item.
    ready: Condvar,
    /// Senders wait here for room in their lane.
    room: Condvar,
}

impl<T> Inbox<T> {
    /// An inbox holding at most `request_capacity` requests and `wal_capacity` WAL slices.
    pub(crate) fn new(request_capacity: usize, wal_capacity: usize) -> Inbox<T> {
        assert!(request_capacity > 0 && wal_capacity > 0, "an inbox lane needs room for one item");
        Inbox {
            lanes: Mutex::new(Lanes {
                requests: VecDeque::new(),
                wal: VecDeque::new(),
                closed: false,
                waiting_for_room: 0,
            }),
            request_capacity,
            wal_capacity,
            ready: Condvar::new(),
            room: Condvar::new(),
        }
    }

    fn lane_mut<'a>(&self, lanes: &'a mut Lanes<T>, lane: Lane) -> (&'a mut VecDeque<T>, usize) {
        match lane {
            Lane::Requests => (&mut lanes.requests, self.request_capacity),
            Lane::Wal => (&mut lanes.wal, self.wal_capacity),
        }
    }

    /// Queues `item`, waiting while its lane is full.
    pub(crate) fn send(&self, lane: Lane, item: T) -> Result<(), SendError<T>> {
        let mut lanes = self.lanes.lock();
        loop {
            if lanes.closed {
                return Err(SendError::Closed(item));
            }
            let (queue, capacity) = self.lane_mut(&mut lanes, lane);
            if queue.len() < capacity {
                queue.push_back(item);
                break;
            }
            lanes.waiting_for_room += 1;
            self.room.wait(&mut lanes);
            lanes.waiting_for_room -= 1;
        }
        drop(lanes);
        self.ready.notify_one();
        Ok(())
    }

    /// Queues `item` if its lane has room; never waits.
    pub(crate) fn try_send(&self, lane: Lane, item: T) -> Result<(), SendError<T>> {
        let mut lanes = self.lanes.lock();
        if lanes.closed {
            return Err(SendError::Closed(item));
        }
        let (queue, capacity) = self.lane_mut(&mut lanes, lane);
        if queue.len() >= capacity {
            return Err(SendError::Full(item));
        }
        queue.push_back(item);
        drop(lanes);
        self.ready.notify_one();
        Ok(())
    }

    /// Waits until `deadline` for at least one item, then moves up to `max` into `out`:
    /// requests first, then WAL slices.
    pub(crate) fn recv_batch(
        &self,
        out: &mut Vec<T>,
        max: usize,
        deadline: Instant,
    ) -> Result<(), RecvError> {
        let mut lanes = self.lanes.lock();
        while lanes.requests.is_empty() && lanes.wal.is_empty() {
            if lanes.closed {
                return Err(RecvError::Closed);
            }
            if self.ready.wait_until(&mut lanes, deadline).timed_out()
                && lanes.requests.is_empty()
                && lanes.wal.is_empty()
            {
                return Err(if lanes.closed { RecvError::Closed } else { RecvError::Timeout });
            }
        }
        let start = out.len();
        while out.len() - start < max {
            match lanes.requests.pop_front().or_else(|| lanes.wal.pop_front()) {
                Some(item) => out.push(item),
                None => break,
            }
        }
        let wake_senders = lanes.waiting_for_room > 0;
        drop(lanes);
        if wake_senders {
            self.room.notify_all();
        }
        Ok(())
    }

    /// Refuses every later send and drops what is queued (outside the lock, so replies that
    /// drop with it wake their waiters without the inbox held).
    pub(crate) fn close(&self) {
        let mut lanes = self.lanes.lock();
        lanes.closed = true;
        let dropped = (std::mem::take(&mut lanes.requests), std::mem::take(&mut lanes.wal));
        drop(lanes);
        drop(dropped);
        self.room.notify_all();
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn requests_come_before_wal_and_each_lane_keeps_its_order() {
        let inbox = Inbox::new(8, 8);
        inbox.send(Lane::Wal, "w1").unwrap();
        inbox.send(Lane::Requests, "r1").unwrap();
        inbox.send(Lane::Wal, "w2").unwrap();
        inbox.send(Lane::Requests, "r2").unwrap();
        let mut out = Vec::new();
        inbox.recv_batch(&mut out, 3, soon()).unwrap();
        assert_eq!(out, ["r1", "r2", "w1"]);
        out.clear();
        inbox.recv_batch(&mut out, 3, soon()).unwrap();
        assert_eq!(out, ["w2"]);
    }

    #[test]
    fn a_full_lane_refuses_try_send_and_the_other_lane_still_takes() {
        let inbox = Inbox::new(1, 2);
        inbox.try_send(Lane::Wal, 1).unwrap();
        inbox.try_send(Lane::Wal, 2).unwrap();
        assert_eq!(inbox.try_send(Lane::Wal, 3), Err(SendError::Full(3)));
        inbox.try_send(Lane::Requests, 10).unwrap();
        assert_eq!(inbox.try_send(Lane::Requests, 11), Err(SendError::Full(11)));
        let mut out = Vec::new();
        inbox.recv_batch(&mut out, 10, soon()).unwrap();
        assert_eq!(out, [10, 1, 2]);
        inbox.try_send(Lane::Wal, 3).unwrap();
    }

    #[test]
    fn an_empty_inbox_times_out() {
        let inbox: Inbox<u8> = Inbox::new(1, 1);
        let started = Instant::now();
        let mut out = Vec::new();
        assert_eq!(
            inbox.recv_batch(&mut out, 1, started + Duration::from_millis(20)),
            Err(RecvError::Timeout)
        );
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert!(out.is_empty());
    }

    /// A sender blocked on a full lane goes on once the receiver takes an item, and every item
    /// of many senders arrives exactly once.
    #[test]
    fn blocked_senders_resume_and_nothing_is_lost() {
        let inbox = Arc::new(Inbox::new(2, 2));
        let senders: Vec<_> = (0..4u32)
            .map(|t| {
                let inbox = Arc::clone(&inbox);
                std::thread::spawn(move || {
                    for i in 0..500u32 {
                        let lane = if i % 2 == 0 { Lane::Requests } else { Lane::Wal };
                        inbox.send(lane, t * 1000 + i).unwrap();
                    }
                })
            })
            .collect();
        let mut got = Vec::new();
        while got.len() < 2000 {
            inbox.recv_batch(&mut got, 3, soon()).expect("items keep coming");
        }
        senders.into_iter().for_each(|s| s.join().unwrap());
        got.sort_unstable();
        let want: Vec<u32> = (0..4u32).flat_map(|t| (0..500).map(move |i| t * 1000 + i)).collect();
        assert_eq!(got, want);
    }

    /// Closing wakes a blocked sender with its item and a waiting receiver with `Closed`, and
    /// drops what was queued.
    #[test]
    fn close_wakes_everyone_and_drops_the_queue() {
        let inbox = Arc::new(Inbox::new(1, 1));
        let queued = Arc::new(());
        inbox.send(Lane::Requests, Arc::clone(&queued)).unwrap();
        let blocked = {
            let inbox = Arc::clone(&inbox);
            let item = Arc::new(());
            std::thread::spawn(move || matches!(inbox.send(Lane::Requests, item), Err(SendError::Closed(_))))
        };
        let deadline = soon();
        while inbox.lanes.lock().waiting_for_room == 0 {
            assert!(Instant::now() < deadline, "the sender never blocked");
            std::thread::yield_now();
        }
        inbox.close();
        assert!(blocked.join().unwrap(), "the blocked sender got its item back");
        assert_eq!(Arc::strong_count(&queued), 1, "the queued item was dropped");
        let mut out = Vec::new();
        assert_eq!(inbox.recv_batch(&mut out, 1, soon()), Err(RecvError::Closed));
        assert_eq!(
            inbox.try_send(Lane::Wal, Arc::new(())).map_err(|e| matches!(e, SendError::Closed(_))),
            Err(true)
        );
    }
}
