//! Regression: a filter must stop on SIGTERM even when its unix socket path
//! has since been taken over by another filter (it used to wake its accept
//! thread by connecting to the path, reached the other filter, and hung).

use std::time::Duration;

use vm_tests::lifeboat::Scratch;

#[test]
fn filter_stops_on_sigterm_after_its_socket_path_was_taken_over() {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-shutdown-");
    let sock = s.path("s.sock");
    for name in ["d", "e"] {
        let img = s.path(&format!("{name}.img"));
        std::fs::File::create(&img).unwrap().set_len(16 << 20).unwrap();
        s.home.run_ok(&["protect", name, "--image", img.to_str().unwrap()]);
    }
    // `filter` returns once the filter printed that it listens on the socket.
    let mut a = s.home.filter("d", &sock);
    assert!(sock.exists(), "{} never appeared", sock.display());
    std::fs::remove_file(&sock).unwrap();
    let b = s.home.filter("e", &sock);
    assert!(sock.exists(), "{} never appeared", sock.display());
    a.signal(libc::SIGTERM);
    // Fails (and kills both filters) unless d stops within 20 s.
    let status = a.wait(Duration::from_secs(20));
    assert!(status.success(), "filter d exited with {status}\n{}", a.log());
    assert!(sock.exists(), "filter d removed the socket file filter e now owns");
    b.stop();
}

/// A control client still connected (here: one that made a cut and never
/// finished it) when the filter gets SIGTERM: the filter ends the
/// connection, aborts its cut (the blocks stay dirty) and exits 0 with the
/// state clean. It used to fail with "disk still referenced at shutdown"
/// whenever a control connection's thread outlived the accept loop (seen in
/// CI right after a `ship --once` returned).
#[test]
fn filter_stops_cleanly_with_a_control_client_still_connected() {
    use std::io::{BufRead, BufReader, Write};
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-shutdown-ctl-");
    let img = s.path("d.img");
    std::fs::File::create(&img).unwrap().set_len(16 << 20).unwrap();
    s.home.run_ok(&["protect", "d", "--image", img.to_str().unwrap()]);
    let sock = s.path("d.sock");
    let f = s.home.filter("d", &sock);
    let control = s.home.dir.join("disks/d/control.sock");
    let conn = std::os::unix::net::UnixStream::connect(&control).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    (&conn).write_all(b"cut full\n").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("ok "), "{line}");
    f.stop(); // SIGTERM, and exit status 0 required
    let o = s.home.run_ok(&["dirty", "d", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["open"], false, "the state file was left open: {v}");
    // The connection was ended by the filter.
    line.clear();
    assert_eq!(reader.read_line(&mut line).unwrap(), 0, "the control connection is still open: {line}");
}

/// `ship --once` while the process serving the disk is in a cut of its own
/// (the agent's cycle; here a control client holding a cut): it waits for
/// that cut to end, then ships, instead of failing. A planned failover's
/// final cycle failed this way in CI while the agent was in a cycle.
#[test]
fn ship_once_waits_for_a_cut_in_progress() {
    use std::io::{BufRead, BufReader, Read, Write};
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-ship-waits-");
    let (key, vault, img) = (s.path("k.key"), s.path("vault"), s.path("d.img"));
    s.home.run_ok(&["key", "new", "--out", key.to_str().unwrap()]);
    s.home.run_ok(&["vault", "init", vault.to_str().unwrap(), "--key", key.to_str().unwrap()]);
    std::fs::File::create(&img).unwrap().set_len(4 << 20).unwrap();
    let (i, v, k) = (img.to_str().unwrap(), vault.to_str().unwrap(), key.to_str().unwrap());
    s.home.run_ok(&["protect", "d", "--image", i, "--vault", v, "--key", k]);
    let f = s.home.filter("d", &s.path("d.sock"));
    let conn = std::os::unix::net::UnixStream::connect(s.home.dir.join("disks/d/control.sock")).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    (&conn).write_all(b"cut dirty\n").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("ok "), "{line}");
    let mut ship = s
        .home
        .command()
        .args(["ship", "d", "--once", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its stderr says it waits (the old code failed here instead).
    let mut err = BufReader::new(ship.stderr.take().unwrap());
    let mut said = String::new();
    loop {
        let mut l = String::new();
        assert!(err.read_line(&mut l).unwrap() > 0, "ship ended without waiting:\n{said}");
        said.push_str(&l);
        if l.contains("waiting up to") {
            break;
        }
    }
    // The other cut ends; the ship goes on and commits.
    (&conn).write_all(b"abort\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("ok "), "{line}");
    let mut out = String::new();
    ship.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let status = ship.wait().unwrap();
    assert!(status.success(), "ship failed: {out}\n{said}");
    assert!(out.contains("\"sequence\":1"), "{out}");
    drop(conn);
    f.stop();
}
