//! Strict parsing of the markers the guest prints on its serial console.
//!
//! A marker is a whole console line `@@LB WORD [ARGS...]` ended by CRLF (the
//! guest's tty turns `\n` into `\r\n`). Anything else on the console (kernel
//! messages, QEMU's own output) is kept for the failure log but ignored. A line
//! that contains `@@LB` anywhere but at its start, or a marker line that does
//! not end in CRLF, is garbled (for example a kernel message interleaved with
//! it) and is an error, never silently accepted or skipped.

/// The marker prefix.
pub const PREFIX: &str = "@@LB ";

/// One marker from the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// The first word after the prefix: `READY`, `STEP`, `FAIL`, `DONE`, ...
    pub word: String,
    /// The rest of the line after the word and one space (may be empty).
    pub args: String,
}

/// Why a console transcript could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialError {
    /// A line that contains the marker prefix but is not a well-formed marker.
    Garbled {
        /// 1-based line number in the transcript.
        line: usize,
        /// The line as received (lossy UTF-8).
        text: String,
    },
}

impl std::fmt::Display for SerialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SerialError::Garbled { line, text } => write!(f, "garbled marker on console line {line}: {text:?}"),
        }
    }
}

/// Extracts the markers from a console transcript, in order. The last line is
/// only considered when it is complete (ends in `\n`).
pub fn markers(transcript: &[u8]) -> Result<Vec<Marker>, SerialError> {
    let mut out = Vec::new();
    let mut rest = transcript;
    let mut n = 0;
    while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
        n += 1;
        let raw = &rest[..nl];
        rest = &rest[nl + 1..];
        let text = String::from_utf8_lossy(raw);
        if !text.contains("@@LB") {
            continue;
        }
        let garbled = || SerialError::Garbled { line: n, text: text.to_string() };
        let body = text.strip_suffix('\r').ok_or_else(garbled)?;
        let body = body.strip_prefix(PREFIX).ok_or_else(garbled)?;
        if body.contains("@@LB") || body.contains('\r') || body.is_empty() {
            return Err(garbled());
        }
        let (word, args) = body.split_once(' ').unwrap_or((body, ""));
        if word.is_empty() || !word.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
            return Err(garbled());
        }
        out.push(Marker { word: word.to_string(), args: args.to_string() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(word: &str, args: &str) -> Marker {
        Marker { word: word.into(), args: args.into() }
    }

    #[test]
    fn markers_are_whole_crlf_lines() {
        let t = b"SeaBIOS\r\n[    0.1] booting\r\n@@LB READY 131072\r\nnoise\r\n@@LB STEP ext4 done\r\n@@LB DONE 0\r\n";
        assert_eq!(markers(t).unwrap(), vec![m("READY", "131072"), m("STEP", "ext4 done"), m("DONE", "0")]);
    }

    #[test]
    fn an_incomplete_last_line_is_not_a_marker_yet() {
        assert_eq!(markers(b"@@LB READY 1\r\n@@LB DO").unwrap(), vec![m("READY", "1")]);
    }

    #[test]
    fn a_marker_without_cr_is_garbled() {
        let e = markers(b"x\r\n@@LB DONE 0\n").unwrap_err();
        assert_eq!(e, SerialError::Garbled { line: 2, text: "@@LB DONE 0".into() });
    }

    #[test]
    fn interleaved_kernel_output_is_garbled_not_skipped() {
        assert!(markers(b"[ 3.2] virtio_blk@@LB DONE 0\r\n").is_err());
        assert!(markers(b"@@LB DONE 0[ 3.2] @@LB x\r\n").is_err());
        assert!(markers(b"@@LB done 0\r\n").is_err());
        assert!(markers(b"@@LB \r\n").is_err());
    }

    #[test]
    fn lines_without_the_prefix_are_ignored() {
        assert_eq!(markers(b"LB DONE 0\r\n@LB READY\r\n").unwrap(), vec![]);
    }
}
