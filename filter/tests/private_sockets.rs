//! Issue 12, hole 6: the filter's sockets are private whatever the umask.
//! Under `umask 000` (this test binary holds only this test, so the umask it
//! sets touches nothing else) the control socket and an NBD unix socket are
//! 0600 as soon as they accept connections, and their owner still connects.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use disk_format::Geometry;
use filter::control::ControlServer;
use filter::disk::DiskPaths;
use filter::nbd::{Export, Listen, Server};
use filter::{Disk, StateFile};

#[test]
fn under_umask_000_the_control_and_nbd_sockets_are_0600() {
    // SAFETY: umask(2) takes no pointers and cannot fail.
    unsafe { libc::umask(0) };
    let dir = tempfile::tempdir().unwrap();
    let (image, state) = (dir.path().join("disk.img"), dir.path().join("state"));
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    StateFile::create(&state, Geometry::new(1 << 20, 4096).unwrap(), [1; 16], false).unwrap();
    let disk = Arc::new(Disk::open(DiskPaths { image, state, scratch: dir.path().join("scratch") }).unwrap());

    let control_path = dir.path().join("control.sock");
    let control = ControlServer::start(&control_path, Arc::clone(&disk)).unwrap();
    let nbd_path = dir.path().join("nbd.sock");
    let server = Server::bind(&[Listen::Unix(nbd_path.clone())], "d", Arc::clone(&disk) as Arc<dyn Export>).unwrap();
    for p in [&control_path, &nbd_path] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "{} is {mode:04o} under umask 000", p.display());
        UnixStream::connect(p).unwrap_or_else(|e| panic!("the owner cannot connect to {}: {e}", p.display()));
    }
    drop(server);
    control.stop();
}
