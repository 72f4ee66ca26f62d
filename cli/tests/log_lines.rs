//! Issue 13, part 4: the library crates log through `tracing` and the
//! binary's subscriber writes each event as one stamped line on stderr.
//!
//! The NBD server's lines come from the `filter` crate, which no longer
//! writes stderr itself: if the binary installed no subscriber (or the
//! filter still printed on its own), the lines would be missing or
//! unstamped.

use std::time::Duration;

use vm_tests::lifeboat::Scratch;

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, as every log line starts.
fn is_stamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn a_filter_crate_event_reaches_stderr_as_one_stamped_line() {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-log-lines-");
    let img = s.path("d.img");
    std::fs::File::create(&img).unwrap().set_len(16 << 20).unwrap();
    s.home.run_ok(&["protect", "d", "--image", img.to_str().unwrap()]);
    let sock = s.path("d.sock");
    let mut f = s.home.filter("d", &sock);
    // A client that connects and leaves: the filter crate's NBD server logs
    // the connection (and how the handshake ended).
    drop(std::os::unix::net::UnixStream::connect(&sock).unwrap());
    let line = f.wait_line("connection from", Duration::from_secs(20));
    let (stamp, message) = line.split_once(' ').unwrap_or_else(|| panic!("no stamp: {line:?}"));
    assert!(is_stamp(stamp), "the line does not start with an RFC 3339 stamp: {line:?}");
    assert!(message.starts_with("nbd[d#1]: connection from unix:"), "the message changed: {line:?}");
    // The binary's own lines are stamped the same way.
    let ready = f.log().lines().find(|l| l.contains("filter d listening on")).unwrap().to_string();
    assert!(is_stamp(ready.split_once(' ').unwrap().0), "{ready:?}");
    f.stop();
}

#[test]
fn an_error_of_a_command_is_one_stamped_line() {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-log-error-");
    let o = s.home.run(&["points", "nosuch"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    let (stamp, message) = lines[0].split_once(' ').unwrap();
    assert!(is_stamp(stamp), "{err}");
    assert!(message.starts_with("lifeboat: error: disk \"nosuch\" is not protected"), "{err}");
}
