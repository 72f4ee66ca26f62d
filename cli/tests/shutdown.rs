//! Regression: a filter must stop on SIGTERM even when its unix socket path
//! has since been taken over by another filter (it used to wake its accept
//! thread by connecting to the path, reached the other filter, and hung).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lifeboat");

fn wait_for(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn filter_stops_on_sigterm_after_its_socket_path_was_taken_over() {
    let dir = tempfile::Builder::new().prefix("lb-shutdown-").tempdir().unwrap();
    let home = dir.path().join("home");
    let sock = dir.path().join("s.sock");
    for name in ["d", "e"] {
        let img = dir.path().join(format!("{name}.img"));
        std::fs::File::create(&img).unwrap().set_len(16 << 20).unwrap();
        let st = Command::new(BIN).arg("--home").arg(&home).args(["protect", name, "--image"]).arg(&img).output().unwrap();
        assert!(st.status.success(), "{st:?}");
    }
    let spawn = |name: &str| {
        Command::new(BIN)
            .arg("--home")
            .arg(&home)
            .args(["filter", name, "--listen"])
            .arg(format!("unix:{}", sock.display()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut a = spawn("d");
    wait_for(&sock);
    std::fs::remove_file(&sock).unwrap();
    let mut b = spawn("e");
    wait_for(&sock);
    assert!(Command::new("kill").args(["-TERM", &a.id().to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = a.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = a.kill();
            let _ = b.kill();
            panic!("filter d did not stop within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "filter d exited with {status}");
    assert!(sock.exists(), "filter d removed the socket file filter e now owns");
    assert!(Command::new("kill").args(["-TERM", &b.id().to_string()]).status().unwrap().success());
    assert!(b.wait().unwrap().success());
}
