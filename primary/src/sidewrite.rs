//! Writing whole frames to a connection from a thread that does not own it, without blocking.
//!
//! A streaming connection belongs to its task, yet the engine's flusher thread is the first to
//! know when there is something to send (new durable WAL on a primary, a new flushed Lsn on a
//! replica). Waking the task costs a thread hand-off per commit; a [`SideWriter`] lets the
//! flusher write the frame itself on a duplicate of the socket, never waiting for it.
//!
//! ```text
//! flusher ── write(frame) ─► socket (dup) ──► peer
//!                 │ the part the socket did not take
//!                 ▼
//!              backlog ── drain_into(owner's stream), by the owning task ──► socket
//! ```

use std::io::Write;
use std::os::fd::AsFd;

use hindsight_protocol::{ENVELOPE_OVERHEAD_MAX, FRAME_HEADER_LEN, WAL_DATA_LEN_MAX};

/// The most bytes a backlog may hold: two of the largest frames a side writer sends (a WAL
/// frame's rest and a keepalive behind it; a status report's rest and the newest report).
pub const BACKLOG_BYTES_MAX: usize = 2 * (FRAME_HEADER_LEN + WAL_DATA_LEN_MAX + ENVELOPE_OVERHEAD_MAX);

/// A non-blocking writer on a duplicate of a connection's socket, with a backlog for what the
/// socket does not take at once. Callers keep the backlog small: each writes only while
/// [`SideWriter::is_clear`] or adds at most one frame behind it, within
/// [`BACKLOG_BYTES_MAX`].
///
/// Invariants (the owner keeps the writer under one lock, so these hold between calls):
/// - Bytes leave in the order frames were given: nothing is written to the socket while the
///   backlog holds bytes, except the backlog itself by [`SideWriter::drain_into`].
/// - The backlog holds only whole frames or the rest of one whose start went out, so the
///   stream stays a sequence of whole frames.
/// - Once `failed` is set, nothing more is written.
#[derive(Debug)]
pub struct SideWriter {
    /// A duplicate of the connection's socket; non-blocking, as the tokio original is.
    socket: std::net::TcpStream,
    /// Bytes that must go out before anything else.
    backlog: Vec<u8>,
    /// Why a write failed; the owner ends the connection with it.
    failed: Option<String>,
}

impl SideWriter {
    /// Duplicates `stream`'s socket.
    pub fn new(stream: &tokio::net::TcpStream) -> std::io::Result<SideWriter> {
        let fd = stream.as_fd().try_clone_to_owned()?;
        Ok(SideWriter { socket: std::net::TcpStream::from(fd), backlog: Vec::new(), failed: None })
    }

    /// Nothing waits in the backlog and no write failed: a frame written now goes out at once.
    pub fn is_clear(&self) -> bool {
        self.backlog.is_empty() && self.failed.is_none()
    }

    /// Bytes waiting in the backlog.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Why a write failed, if one did.
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Writes `frame` now if the backlog is empty; what the socket does not take (all of it
    /// when the backlog is not empty) joins the backlog. Returns true when the whole frame went
    /// out. `what` names the frame in the failure message.
    pub fn write(&mut self, frame: &[u8], what: &str) -> bool {
        if self.failed.is_some() {
            return false;
        }
        if !self.backlog.is_empty() {
            self.enqueue(frame);
            return false;
        }
        let mut written = 0;
        while written < frame.len() {
            match self.socket.write(&frame[written..]) {
                Ok(0) => {
                    self.failed = Some("the peer closed the connection".into());
                    return false;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.enqueue(&frame[written..]);
                    return false;
                }
                Err(e) => {
                    self.failed = Some(format!("send {what}: {e}"));
                    return false;
                }
            }
        }
        true
    }

    /// Adds a whole frame behind the backlog without writing it (the owner writes it with
    /// [`SideWriter::drain_into`]).
    pub fn enqueue(&mut self, frame: &[u8]) {
        self.backlog.extend_from_slice(frame);
        debug_assert!(
            self.backlog.len() <= BACKLOG_BYTES_MAX,
            "side writer backlog at {} bytes, over {BACKLOG_BYTES_MAX}: a caller queued more than a frame behind it",
            self.backlog.len()
        );
    }

    /// Writes what the backlog holds through the owner's own stream (so tokio's readiness stays
    /// right) without waiting. `Ok(true)`: the backlog is empty; `Ok(false)`: the socket is
    /// full, await `owner.writable()` and call again (without holding the lock).
    pub fn drain_into(&mut self, owner: &tokio::net::TcpStream) -> Result<bool, String> {
        if let Some(why) = &self.failed {
            return Err(why.clone());
        }
        while !self.backlog.is_empty() {
            match owner.try_write(&self.backlog) {
                Ok(0) => {
                    let why = "the peer closed the connection".to_string();
                    self.failed = Some(why.clone());
                    return Err(why);
                }
                Ok(n) => {
                    self.backlog.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = format!("send to the peer: {e}");
                    self.failed = Some(why.clone());
                    return Err(why);
                }
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// Frames written while the socket refuses come out whole and in order once the owner
    /// drains the backlog.
    #[tokio::test]
    async fn a_full_socket_keeps_frames_whole_and_in_order() {
        let (ours, mut theirs) = pair().await;
        let mut w = SideWriter::new(&ours).unwrap();
        const FRAME: usize = 64 * 1024;
        // Write until the socket refuses part of a frame, then queue one more behind it.
        let mut frames = 0usize;
        while w.is_clear() {
            assert!(frames < 255, "the socket buffers never filled");
            assert!(w.write(&[frames as u8; FRAME], "a test frame") || !w.is_clear());
            frames += 1;
        }
        assert!(!w.write(&[frames as u8; FRAME], "a test frame"), "a frame behind the backlog waits");
        frames += 1;
        assert!(w.backlog_len() > FRAME && w.backlog_len() <= 2 * FRAME);
        let reader = tokio::spawn(async move {
            let mut all = vec![0u8; frames * FRAME];
            theirs.read_exact(&mut all).await.unwrap();
            all
        });
        while !w.drain_into(&ours).unwrap() {
            ours.writable().await.unwrap();
        }
        assert!(w.is_clear());
        let all = reader.await.unwrap();
        for (i, chunk) in all.chunks(FRAME).enumerate() {
            assert!(chunk.iter().all(|&b| b == i as u8), "frame {i} is out of order or torn");
        }
    }

    /// A closed peer fails the writer, and a failed writer writes nothing more.
    #[tokio::test]
    async fn a_closed_peer_fails_the_writer() {
        let (ours, theirs) = pair().await;
        let mut w = SideWriter::new(&ours).unwrap();
        drop(theirs);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while w.failed().is_none() {
            assert!(std::time::Instant::now() < deadline, "writing to a closed peer never failed");
            w.write(&[1; 1024], "a test frame");
            if !w.is_clear() && w.failed().is_none() {
                let _ = w.drain_into(&ours);
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        let why = w.failed().unwrap().to_string();
        assert!(why == "the peer closed the connection" || why.starts_with("send a test frame: "), "{why}");
        assert!(!w.write(&[2; 8], "a test frame"));
        assert!(w.drain_into(&ours).is_err());
    }
}
