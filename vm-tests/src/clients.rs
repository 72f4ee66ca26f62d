//! The host NBD clients the tests drive: QEMU's `qemu-io` and libnbd's Python
//! module (the one behind `nbdsh`). `nbdinfo` and `nbdcopy` are run directly
//! through [`paths::tool`].

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::paths;

/// The NBD URI of `export` on the unix socket `sock` ("" is the default export).
pub fn nbd_uri(export: &str, sock: &Path) -> String {
    format!("nbd+unix:///{export}?socket={}", sock.display())
}

/// Runs qemu-io against an NBD URI with one `-c` per command; every command
/// must succeed (qemu-io exits 1 when a `read -P` pattern does not match, and
/// prints "failed" for a failed request). Returns its stdout.
pub fn qemu_io<S: AsRef<str>>(uri: &str, cmds: &[S]) -> String {
    let mut cmd = Command::new(paths::tool("qemu-io"));
    cmd.args(["-f", "raw", uri]);
    for c in cmds {
        cmd.args(["-c", c.as_ref()]);
    }
    let out = cmd.output().expect("run qemu-io");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let cmds: Vec<&str> = cmds.iter().map(AsRef::as_ref).collect();
    assert!(
        out.status.success() && !stdout.contains("failed"),
        "qemu-io {uri} {cmds:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Debian's `/usr/bin/python3` with the libnbd module (python3-libnbd), or a
/// failure that says how to install it.
pub fn python_nbd() -> PathBuf {
    let py = PathBuf::from("/usr/bin/python3");
    let ok = Command::new(&py).args(["-c", "import nbd"]).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "/usr/bin/python3 cannot `import nbd` (python3-libnbd): run scripts/setup.sh");
    py
}
