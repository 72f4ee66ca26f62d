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
