//! A replica's side of the committer: the WAL it takes from its upstream, and the pending
//! tail it holds past what that upstream confirmed durable (decision #34).
//!
//! The committer writes each slice at its Lsn and replays it; the flusher makes it durable
//! and publishes it once the upstream has reported it durable too. WAL written past the
//! confirmed Lsn may be WAL the upstream loses in a crash, so a new stream starts at the
//! confirmed Lsn ([`Committer::resume`]) and what arrives is compared with what is on disk
//! ([`Committer::ingest`]).

use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;

use hindsight_protocol::{Lsn, Timeline};

use super::{Committer, Published};
use crate::error::{Error, Result};
use crate::wal::decoder::Decoder;
use crate::wal::reader::{list_segments, RawWalReader};
use crate::wal::segment::{first_record_lsn, segment_file_name, segment_of};
use crate::wal::writer::out_of_order;

/// Flushed groups a replica holds for its upstream's confirmation at most; past it the oldest
/// is dropped, and the newer ones show it once confirmed.
pub const HELD_GROUPS_MAX: usize = 4096;

/// A replica committer's input side.
pub(super) struct Standby {
    /// Decodes the WAL bytes written, from the replay position on.
    pub(super) decoder: Decoder,
    /// The end of the WAL taken as input since the stream (re)started: written, or found equal
    /// to the pending tail. Reported upstream as written, and flushed once fsynced.
    pub(super) received: Lsn,
    /// The end of the WAL fed to the decoder (and replayed). Past `received` only while a
    /// tail that was replayed before a reconnect is compared again.
    pub(super) decoded: Lsn,
    /// WAL on disk from `received` to its `end` that the upstream has not sent again yet.
    pub(super) tail: Option<Tail>,
}

/// WAL a replica holds past what its upstream confirmed durable, which the upstream may have
/// lost in a crash (decision #34). It is kept until the upstream sends those Lsns again: equal
/// bytes are taken as they are, and at the first difference the rest is cut (the upstream lost
/// it, so no client was told it committed). Never cut before that: it may hold `remote_flush`
/// commits a client was told about.
///
/// Invariants:
/// - `received <= end`, and the writer stands at `end`; nothing is written while a tail is
///   pending.
/// - Bytes below `Standby::decoded` were replayed already (into versions nothing shows): a
///   difference there stops replay until a restart, which drops them. Bytes above it are
///   replayed as they are matched, and a difference there is cut.
/// - While `received < decoded`, groups carry `shown`, the state visible when the stream
///   restarted, since the replayer's state is past what was compared.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tail {
    /// Where the pending WAL ends (the writer's position).
    pub(super) end: Lsn,
    /// The state shown when the tail was set aside.
    pub(super) shown: Published,
}

/// fdatasyncs the WAL segments holding `from..to` (crash recovery's WAL, before anything in
/// it is reported durable): for each segment number, the file recovery read, that of the
/// highest timeline not above `timeline`.
pub(super) fn sync_wal_range(
    dir: &Path,
    timeline: Timeline,
    segment_size_bytes: u64,
    from: Lsn,
    to: Lsn,
) -> Result<()> {
    if to <= from {
        return Ok(());
    }
    let (first, last) = (segment_of(from, segment_size_bytes), segment_of(Lsn(to.0 - 1), segment_size_bytes));
    let mut newest: std::collections::BTreeMap<u64, std::path::PathBuf> = std::collections::BTreeMap::new();
    for (tl, no, path) in list_segments(dir)? {
        if tl <= timeline && (first..=last).contains(&no) {
            newest.insert(no, path); // sorted by timeline, so the highest wins
        }
    }
    for path in newest.values() {
        File::open(path)
            .and_then(|f| f.sync_data())
            .map_err(|e| Error::io(format!("fsync WAL segment {}", path.display()), e))?;
    }
    Ok(())
}

impl Committer {
    /// A replica connects to its upstream: returns where the stream should start. That is
    /// where its input ended, unless it holds WAL past what the upstream confirmed durable:
    /// the upstream may have lost that in a crash, so the stream starts at the confirmed Lsn
    /// and the rest becomes a pending tail, compared with what the upstream sends again.
    pub(super) fn resume(&mut self) -> Result<Lsn> {
        self.check_poisoned()?;
        // Nothing is in flight once this returns, so the positions set below are not passed by
        // an older group's fdatasync.
        self.wait_flushed()?;
        // Read under the lock that publishing takes, so the held groups cleared below are all
        // past it.
        let mut q = self.flusher.queue.lock();
        let durable = Lsn(self.shared.upstream_durable.load(Ordering::Acquire));
        let standby = self.standby.as_mut().expect("only a replica resumes a stream");
        // WAL past the confirmed Lsn, written or matched on an earlier connection, may be what
        // the upstream lost: compared again, from the confirmed Lsn.
        if standby.received <= durable {
            return Ok(standby.received);
        }
        // Held groups are all past the confirmed Lsn (anything at or below it was shown): they
        // come back once the upstream has sent the same bytes again.
        q.held.clear();
        let shown = *self.shared.published.lock();
        let end = standby.tail.map_or(standby.received, |t| t.end);
        tracing::info!(
            confirmed = %durable, end = %end,
            "holding WAL past what the upstream confirmed durable; it is compared with what the upstream sends again"
        );
        standby.tail = Some(Tail { end, shown });
        standby.received = durable;
        self.shared.insert_lsn.store(durable.0, Ordering::Release);
        self.shared.flushed_lsn.store(durable.0, Ordering::Release);
        self.enqueued_written = durable;
        Ok(durable)
    }

    /// A replica's step: writes WAL bytes at their Lsn and replays every record they complete.
    /// Bytes at Lsns of a pending tail are compared with it instead (see [`Tail`]). Nothing
    /// becomes visible until the flusher has made it durable and the upstream confirmed it.
    pub(super) fn ingest(&mut self, start: Lsn, bytes: &[u8]) -> Result<()> {
        self.check_poisoned()?;
        let standby = self.standby.as_ref().expect("WAL input only reaches a replica's committer");
        if start != standby.received {
            return Err(out_of_order(standby.received, start, bytes.len()));
        }
        let (mut pos, mut rest) = (start, bytes);
        if let Some(tail) = standby.tail {
            let decoded = standby.decoded;
            let n = (tail.end.0 - start.0).min(bytes.len() as u64) as usize;
            let same = self.equal_prefix(start, &bytes[..n])?;
            pos = start.add(same as u64);
            // Matched bytes not replayed yet are replayed now.
            if pos > decoded {
                self.replay_bytes(&bytes[(decoded.max(start).0 - start.0) as usize..same])?;
            }
            rest = &bytes[same..];
            let standby = self.standby.as_mut().expect("a replica");
            standby.received = pos;
            standby.decoded = decoded.max(pos);
            if same < n {
                self.diverged(pos, decoded, tail)?;
            }
            if same < n || pos == tail.end {
                self.standby.as_mut().expect("a replica").tail = None;
            }
        }
        if !rest.is_empty() {
            self.writer.write_raw(pos, rest)?;
            self.replay_bytes(rest)?;
            let standby = self.standby.as_mut().expect("a replica");
            standby.received = pos.add(rest.len() as u64);
            standby.decoded = standby.received;
        }
        Ok(())
    }

    /// How many of `bytes` equal the local WAL from `start` on.
    fn equal_prefix(&self, start: Lsn, bytes: &[u8]) -> Result<usize> {
        let seg = self.control.segment_size_bytes;
        let mut reader = RawWalReader::new(&self.dir.join("wal"), self.control.timeline, seg);
        let (mut done, mut local) = (0usize, Vec::new());
        while done < bytes.len() {
            local.clear();
            let from = start.add(done as u64);
            let n = reader
                .read(from, start.add(bytes.len() as u64), bytes.len() - done, &mut local)
                .map_err(|e| Error::Mismatch(format!("read this replica's pending WAL at {from}: {e}")))?;
            if let Some(i) = local.iter().zip(&bytes[done..]).position(|(a, b)| a != b) {
                return Ok(done + i);
            }
            done += n;
        }
        Ok(done)
    }

    /// The upstream sent bytes that differ from the pending tail at `at`: it lost the tail's
    /// WAL from there in a crash, after sending it. Where nothing past `at` was replayed yet
    /// (`decoded`), the tail is cut there; otherwise replay stops until a restart, which
    /// drops it (the store cannot take back what was replayed, though nothing of it was shown).
    fn diverged(&mut self, at: Lsn, decoded: Lsn, tail: Tail) -> Result<()> {
        let seg = self.control.segment_size_bytes;
        let file = self.dir.join("wal").join(segment_file_name(self.control.timeline, segment_of(at, seg)));
        if at < decoded {
            return Err(Error::Corrupt {
                lsn: at,
                file,
                detail: format!(
                    "the upstream's WAL differs from this replica's at {at}, past {}, the Lsn it confirmed durable: it lost WAL up to {} in a crash after sending it. Nothing past the confirmed Lsn was shown; restart this replica and it drops that WAL",
                    Lsn(self.shared.upstream_durable.load(Ordering::Acquire)),
                    tail.end
                ),
            });
        }
        if at < first_record_lsn(segment_of(at, seg), seg) {
            return Err(Error::Corrupt {
                lsn: at,
                file,
                detail: "the upstream's WAL differs from this replica's inside a segment header".into(),
            });
        }
        tracing::warn!(
            at = %at, end = %tail.end,
            "the upstream's WAL differs from this replica's unconfirmed tail: it lost that WAL in a crash, so no client was told it committed; cutting the tail"
        );
        self.writer.cut_at(at)
    }

    /// Decodes WAL bytes that follow the ones fed before and replays every record they complete.
    fn replay_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let standby = self.standby.as_mut().expect("WAL input only reaches a replica's committer");
        standby.decoder.feed(bytes);
        loop {
            match standby.decoder.next() {
                Ok(Some(entry)) => {
                    let lsn = entry.lsn;
                    self.replayer.apply(entry).map_err(|e| match e {
                        Error::Corrupt { detail, .. } => Error::Corrupt {
                            lsn,
                            file: self.dir.join("wal").join(segment_file_name(
                                self.control.timeline,
                                segment_of(lsn, self.control.segment_size_bytes),
                            )),
                            detail,
                        },
                        other => other,
                    })?;
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    // Only durable WAL is streamed, so anything undecodable is corruption.
                    return Err(Error::Corrupt {
                        lsn: e.lsn,
                        file: self.dir.join("wal").join(segment_file_name(
                            self.control.timeline,
                            segment_of(e.lsn, self.control.segment_size_bytes),
                        )),
                        detail: format!("in the replication stream: {}", e.detail),
                    });
                }
            }
        }
    }
}
