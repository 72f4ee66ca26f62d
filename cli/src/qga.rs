//! A client of the QEMU guest agent (QGA) over its host-side unix socket:
//! `guest-sync-delimited`, then one command. One connection per command, so
//! a watchdog can use the (single-client) channel after we are gone.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Runs `command` on the guest agent at `socket`; its `return` value, or
/// why it failed (naming the socket).
pub fn execute(socket: &Path, command: &str, timeout: Duration) -> Result<serde_json::Value, String> {
    let fail = |e: &dyn std::fmt::Display| format!("guest agent {} ({command}): {e}", socket.display());
    let s = UnixStream::connect(socket).map_err(|e| fail(&e))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| fail(&e))?;
    s.set_write_timeout(Some(timeout)).map_err(|e| fail(&e))?;
    let mut w = s.try_clone().map_err(|e| fail(&e))?;
    let mut r = BufReader::new(s);
    let mut id = [0u8; 4];
    getrandom::fill(&mut id).map_err(|e| fail(&e))?;
    let id = u32::from_le_bytes(id) & 0x7fff_ffff;
    // 0xFF resets the agent's parser; its reply starts with 0xFF too, so
    // anything a previous client left unread is skipped.
    w.write_all(&[0xFF]).map_err(|e| fail(&e))?;
    writeln!(w, "{{\"execute\":\"guest-sync-delimited\",\"arguments\":{{\"id\":{id}}}}}").map_err(|e| fail(&e))?;
    let mut skipped = Vec::new();
    r.read_until(0xFF, &mut skipped).map_err(|e| fail(&e))?;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).map_err(|e| fail(&e))? == 0 {
            return Err(fail(&"the agent closed the channel"));
        }
        let v: serde_json::Value = match serde_json::from_str(line.trim()) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if v["return"].as_u64() == Some(u64::from(id)) {
            break;
        }
    }
    writeln!(w, "{{\"execute\":\"{command}\"}}").map_err(|e| fail(&e))?;
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| fail(&e))?;
    let v: serde_json::Value = serde_json::from_str(line.trim()).map_err(|e| fail(&format!("{e}: {line:?}")))?;
    match v.get("return") {
        Some(ret) => Ok(ret.clone()),
        None => Err(fail(&v["error"]["desc"].as_str().unwrap_or(line.trim()))),
    }
}
