//! One JSON message per line over a unix socket: how QEMU's monitor (QMP,
//! [`crate::launch`]) and its guest agent (QGA, the agent crate's
//! quiescing) both talk. One client for both, so a timeout, an EOF and a
//! peer that resets the connection mean the same thing everywhere.
//!
//! Every read is bounded by a deadline: a peer that stops answering is a
//! timeout error (`WouldBlock` or `TimedOut`, see [`is_timeout`]), never a
//! hang.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// A JSON-lines conversation on one connection.
#[derive(Debug)]
pub struct JsonLines {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

/// Whether `e` is a read or write that ran out of time.
pub fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

impl JsonLines {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> std::io::Result<JsonLines> {
        JsonLines::new(UnixStream::connect(path)?)
    }

    /// Talks on a connected stream.
    pub fn new(s: UnixStream) -> std::io::Result<JsonLines> {
        Ok(JsonLines { r: BufReader::new(s.try_clone()?), w: s })
    }

    /// The connection (to ask who the peer is).
    pub fn stream(&self) -> &UnixStream {
        &self.w
    }

    fn time_left(deadline: Instant) -> Duration {
        deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))
    }

    /// Writes `bytes` as they are, within `deadline`.
    pub fn send_raw(&mut self, bytes: &[u8], deadline: Instant) -> std::io::Result<()> {
        self.w.set_write_timeout(Some(Self::time_left(deadline)))?;
        self.w.write_all(bytes)
    }

    /// Writes `message` and a newline, within `deadline`.
    pub fn send(&mut self, message: &serde_json::Value, deadline: Instant) -> std::io::Result<()> {
        let mut line = message.to_string();
        line.push('\n');
        self.send_raw(line.as_bytes(), deadline)
    }

    /// Sends `{"execute": command}` (with `arguments` if given). `Ok(false)`:
    /// the peer had closed the connection (a broken pipe or a reset).
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Option<serde_json::Value>,
        deadline: Instant,
    ) -> std::io::Result<bool> {
        let mut message = serde_json::json!({ "execute": command });
        if let Some(a) = arguments {
            message["arguments"] = a;
        }
        match self.send(&message, deadline) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Skips input up to and including the next `delimiter` byte (the guest
    /// agent's `guest-sync-delimited` marks its reply so).
    pub fn skip_through(&mut self, delimiter: u8, deadline: Instant) -> std::io::Result<()> {
        self.r.get_ref().set_read_timeout(Some(Self::time_left(deadline)))?;
        let mut skipped = Vec::new();
        self.r.read_until(delimiter, &mut skipped)?;
        if skipped.last() != Some(&delimiter) {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the peer closed the channel"));
        }
        Ok(())
    }

    /// The next message. `Ok(None)` at the end of the connection: EOF, or a
    /// reset with nothing of the line read (a peer that exits with our
    /// bytes unread ends so, after its last messages). A line that is not
    /// JSON is an `InvalidData` error naming it; a timeout once `deadline`
    /// has passed.
    pub fn next(&mut self, deadline: Instant) -> std::io::Result<Option<serde_json::Value>> {
        self.r.get_ref().set_read_timeout(Some(Self::time_left(deadline)))?;
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && line.is_empty() => return Ok(None),
            Err(e) => return Err(e),
        }
        serde_json::from_str(line.trim()).map(Some).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a JSON message: {:?}: {e}", line.trim()))
        })
    }
}

/// Whether `message` answers a command (`return` or `error`), rather than
/// being an event or a greeting.
pub fn is_reply(message: &serde_json::Value) -> bool {
    message.get("return").is_some() || message.get("error").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pair() -> (JsonLines, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (JsonLines::new(a).unwrap(), b)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn messages_go_out_as_lines_and_come_back_parsed() {
        let (mut c, mut peer) = pair();
        assert!(c.execute("query-status", Some(serde_json::json!({"x": 1})), soon()).unwrap());
        let mut got = [0u8; 64];
        let n = peer.read(&mut got).unwrap();
        let sent: serde_json::Value = serde_json::from_slice(&got[..n]).unwrap();
        assert_eq!(sent, serde_json::json!({"execute": "query-status", "arguments": {"x": 1}}));
        assert_eq!(got[n - 1], b'\n', "one message per line");
        peer.write_all(b"{\"event\":\"X\"}\n{\"return\":{}}\n").unwrap();
        let first = c.next(soon()).unwrap().unwrap();
        assert!(!is_reply(&first), "an event is not a reply");
        assert!(is_reply(&c.next(soon()).unwrap().unwrap()));
    }

    #[test]
    fn the_end_of_the_connection_is_none_and_garbage_is_invalid_data() {
        let (mut c, mut peer) = pair();
        peer.write_all(b"not json\n").unwrap();
        let e = c.next(soon()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("not json"), "{e}");
        drop(peer);
        assert!(c.next(soon()).unwrap().is_none(), "EOF is the end, not an error");
    }

    #[test]
    fn a_silent_peer_is_a_timeout_not_a_hang() {
        let (mut c, _peer) = pair();
        let e = c.next(Instant::now() + Duration::from_millis(20)).unwrap_err();
        assert!(is_timeout(&e), "{e:?}");
    }

    #[test]
    fn skipping_to_a_delimiter_drops_what_an_earlier_client_left() {
        let (mut c, mut peer) = pair();
        peer.write_all(b"{\"return\": 7}\nstale\xff{\"return\":1}\n").unwrap();
        c.skip_through(0xFF, soon()).unwrap();
        assert_eq!(c.next(soon()).unwrap().unwrap()["return"], 1);
        drop(peer);
        let e = c.skip_through(0xFF, soon()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
