//! Where things are: the workspace, the `lifeboat` binary, the cache, the guest
//! kernel and its modules, the cloud-storage emulators, and host tools.

use std::path::{Path, PathBuf};

/// The workspace root (the parent of this crate).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("vm-tests sits in the workspace").to_path_buf()
}

/// The `lifeboat` binary: `$LIFEBOAT_BIN`, else `$CARGO_TARGET_DIR/debug/lifeboat`,
/// else `<workspace>/target/debug/lifeboat`. This crate cannot depend on the
/// binary (cargo only builds binaries for their own package's tests), so
/// `scripts/test.sh` builds it first.
pub fn lifeboat_bin() -> PathBuf {
    let bin = match std::env::var_os("LIFEBOAT_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"))
            .join("debug/lifeboat"),
    };
    assert!(
        bin.is_file(),
        "{} does not exist: build it with `cargo build -p cli` (scripts/test.sh does), or set LIFEBOAT_BIN",
        bin.display()
    );
    bin
}

/// The cache folder: `$LIFEBOAT_CACHE`, else `<workspace>/.cache` (the same
/// rule as scripts/setup.sh).
pub fn cache() -> PathBuf {
    std::env::var_os("LIFEBOAT_CACHE").map(PathBuf::from).unwrap_or_else(|| workspace().join(".cache"))
}

/// The Debian cloud kernel unpacked by scripts/setup.sh.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `.cache/kernel/boot/vmlinuz-VERSION`
    pub vmlinuz: PathBuf,
    /// `VERSION`, e.g. `6.1.0-56-cloud-amd64`
    pub version: String,
    /// `.cache/kernel/lib/modules/VERSION`
    pub modules: PathBuf,
}

/// Finds the unpacked guest kernel, or fails saying how to get it.
pub fn kernel() -> Kernel {
    let root = cache().join("kernel");
    let boot = root.join("boot");
    let mut found: Vec<PathBuf> =
        std::fs::read_dir(&boot).map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    found.retain(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")));
    found.sort();
    let vmlinuz = found.pop().unwrap_or_else(|| panic!("no guest kernel in {}: run scripts/setup.sh", boot.display()));
    let version = vmlinuz.file_name().unwrap().to_str().unwrap().trim_start_matches("vmlinuz-").to_string();
    let modules = root.join("lib/modules").join(&version);
    assert!(modules.is_dir(), "{} is missing: run scripts/setup.sh", modules.display());
    Kernel { vmlinuz, version, modules }
}

/// The QEMU guest agent binary unpacked by scripts/setup.sh.
pub fn qemu_ga() -> PathBuf {
    let p = cache().join("qga/usr/sbin/qemu-ga");
    assert!(p.is_file(), "{} is missing: run scripts/setup.sh", p.display());
    p
}

/// Azurite's Blob service: the wrapper scripts/setup.sh writes into the
/// cache, which runs the pinned Azurite (npm) on a Node.js new enough for it.
pub fn azurite_blob() -> PathBuf {
    let p = cache().join("azurite/azurite-blob");
    assert!(p.is_file(), "{} is missing (Azurite, the Azure Blob emulator): run scripts/setup.sh", p.display());
    p
}

/// moto's S3 server, from the venv scripts/setup.sh makes in the cache.
pub fn moto_server() -> PathBuf {
    let p = cache().join("moto-venv/bin/moto_server");
    assert!(p.is_file(), "{} is missing (moto's server, the S3 emulator): run scripts/setup.sh", p.display());
    p
}

/// A host tool by name, searched in the system directories and `PATH`; fails
/// with "run scripts/setup.sh" when it is not installed (tests never skip).
pub fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"].iter().map(PathBuf::from).collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed: run scripts/setup.sh"))
}
