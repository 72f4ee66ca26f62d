//! The guest's initramfs: busybox (static) and the virtio modules in a base
//! archive cached under `.cache/vm-tests/`, plus a per-test overlay archive
//! with the guest script and its data files. The kernel unpacks concatenated
//! cpio archives in order, so the overlay (uncompressed: its data is random)
//! is appended after zero padding.
//!
//! `/init` mounts proc/sys/dev, loads the virtio modules in dependency order
//! (there is no modules.dep in an unpacked kernel tree), waits for `/dev/vda`,
//! runs `/test.sh` with `sh -e`, prints `@@LB DONE <status>`, syncs and powers
//! off. A press of the ACPI power button (QMP `system_powerdown`) prints
//! `@@LB STEP powerdown`, syncs and powers off at once; the button is armed
//! once its input device appears (polled every 0.1 s for up to 60 s), which
//! `/init` announces with `@@LB BUTTON armed` (`@@LB BUTTON missing` if it
//! never came; `@@LB BUTTON ignored`, never armed, when the kernel command
//! line has `lb.ignore_power_button`). Everything it reports is a
//! [`crate::serial`] marker.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::paths::{self, Kernel};

/// The virtio modules `/init` loads, in this order.
pub const VIRTIO_MODULES: [&str; 7] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
];

/// Modules for the ACPI power button (QMP `system_powerdown`), loaded after
/// the virtio ones.
pub const POWER_MODULES: [&str; 2] = ["evdev", "button"];

/// The virtio-serial console driver, for the QEMU guest agent's channel.
pub const AGENT_MODULES: [&str; 1] = ["virtio_console"];

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /mnt /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_mmio virtio_blk; do
  insmod /lib/modules/$m.ko || echo "@@LB FAIL insmod $m"
done
insmod /lib/modules/evdev.ko; insmod /lib/modules/button.ko; insmod /lib/modules/virtio_console.ko
# The ACPI power button (QMP system_powerdown): say so, sync, power off. Its
# input device can come seconds after the module loads on a slow machine, so
# look for it every 0.1 s for up to 60 s, in the background, and say when it
# is armed (a press before that is lost). lb.ignore_power_button on the
# kernel command line: never arm it (a guest that ignores the button).
if grep -qw lb.ignore_power_button /proc/cmdline; then
  echo; echo "@@LB BUTTON ignored"
else
  ( i=0; armed=0
    while [ $armed -eq 0 ] && [ $i -lt 600 ]; do
      for e in /sys/class/input/event*; do
        d=/dev/${e#/sys/class/}
        if grep -q "Power Button" $e/device/name 2>/dev/null && [ -c $d ]; then
          # Open the device before saying it is armed: a press is only seen
          # by a reader that has it open.
          ( exec 3<$d
            echo; echo "@@LB BUTTON armed"
            dd of=/dev/null bs=24 count=1 <&3 2>/dev/null
            echo; echo "@@LB STEP powerdown"; sync; poweroff -f ) &
          armed=1
        fi
      done
      [ $armed -eq 1 ] || { sleep 0.1; i=$((i+1)); }
    done
    [ $armed -eq 1 ] || { echo; echo "@@LB BUTTON missing"; } ) &
fi
i=0
while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
# End whatever the firmware or kernel left on the console's current line
# (terminal resets without a newline), so every marker is a whole line.
echo
if [ -b /dev/vda ]; then
  echo "@@LB READY $(cat /sys/block/vda/size)"
  sh -e /test.sh
  echo "@@LB DONE $?"
else
  echo "@@LB FAIL no /dev/vda"
  echo "@@LB DONE 99"
fi
sync
poweroff -f
"#;

/// A file to put into the guest's initramfs.
pub struct GuestFile {
    /// Absolute path in the guest, e.g. `/data/p0.bin`.
    pub path: String,
    /// Its content.
    pub data: Vec<u8>,
}

/// The QEMU guest agent (from the cache, see [`paths::qemu_ga`]) and every
/// shared library it needs (the host's, found with `ldd`), at their own paths,
/// for a guest script that runs `/usr/sbin/qemu-ga` after `chmod 755` of it
/// and of the loader and libraries (guest files are written 0644, and the
/// kernel execs the ELF interpreter too).
pub fn guest_agent_files() -> Vec<GuestFile> {
    let ga = paths::qemu_ga();
    let out = Command::new("ldd").arg(&ga).output().expect("run ldd");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut files = vec![GuestFile { path: "/usr/sbin/qemu-ga".into(), data: fs::read(&ga).unwrap() }];
    for line in text.lines() {
        assert!(!line.contains("not found"), "qemu-ga needs a library the host lacks ({line}): run scripts/setup.sh");
        // "libx.so => /lib/.../libx.so (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split("=>").nth(1) {
            Some(rhs) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next().filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push(GuestFile { path: p.to_string(), data: fs::read(p).unwrap() });
        }
    }
    files
}

/// Builds the guest initramfs for one test into `dir` and returns its path:
/// the cached base archive followed by an overlay holding `/test.sh` (run with
/// `sh -e`) and `files`.
pub fn build(kernel: &Kernel, dir: &Path, script: &str, files: &[GuestFile]) -> PathBuf {
    let base = base_archive(kernel);
    let stage = dir.join("overlay");
    fs::create_dir_all(&stage).unwrap();
    write_file(&stage.join("test.sh"), script.as_bytes(), 0o755);
    for f in files {
        let rel = f.path.trim_start_matches('/');
        assert!(!rel.is_empty() && !rel.contains(".."), "bad guest path {}", f.path);
        write_file(&stage.join(rel), &f.data, 0o644);
    }
    let overlay = dir.join("overlay.cpio");
    pack(&stage, &overlay, false);
    let mut initrd = fs::read(&base).unwrap();
    // The kernel reads an uncompressed archive after a compressed one only
    // when it starts 4-byte aligned; zero padding between archives is skipped.
    initrd.resize(initrd.len().next_multiple_of(512), 0);
    initrd.extend_from_slice(&fs::read(&overlay).unwrap());
    let out = dir.join("initrd.img");
    fs::write(&out, initrd).unwrap();
    out
}

/// The base archive (busybox, modules, /init), built once per kernel version
/// and busybox into `.cache/vm-tests/`, and replaced atomically.
fn base_archive(kernel: &Kernel) -> PathBuf {
    let busybox = PathBuf::from("/bin/busybox");
    assert!(busybox.is_file(), "/bin/busybox is missing: run scripts/setup.sh (busybox-static)");
    let bb_len = fs::metadata(&busybox).unwrap().len();
    // The key changes when the kernel, busybox or /init changes.
    let key = format!("{}-{bb_len}-{:016x}", kernel.version, fnv1a(INIT.as_bytes()));
    let cache = paths::cache().join("vm-tests");
    fs::create_dir_all(&cache).unwrap();
    let out = cache.join(format!("initramfs-base-{key}.cpio.gz"));
    if out.is_file() {
        return out;
    }
    let stage = tempfile::Builder::new().prefix("initramfs-").tempdir_in(&cache).unwrap();
    let root = stage.path();
    for d in ["bin", "lib/modules", "proc", "sys", "dev", "mnt", "tmp", "data"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let bb = fs::read(&busybox).unwrap();
    // A static busybox is required: the initramfs has no libc.
    let file = Command::new("sh").arg("-c").arg("ldd /bin/busybox 2>&1 || true").output().unwrap();
    let ldd = String::from_utf8_lossy(&file.stdout);
    assert!(
        !ldd.contains("libc.so"),
        "/bin/busybox is dynamically linked: install busybox-static (scripts/setup.sh)\n{ldd}"
    );
    write_file(&root.join("bin/busybox"), &bb, 0o755);
    write_file(&root.join("init"), INIT.as_bytes(), 0o755);
    for m in VIRTIO_MODULES.iter().chain(&POWER_MODULES).chain(&AGENT_MODULES) {
        let ko = find_module(&kernel.modules, m);
        write_file(&root.join(format!("lib/modules/{m}.ko")), &fs::read(&ko).unwrap(), 0o644);
    }
    let tmp = cache.join(format!("{}.partial-{}", out.file_name().unwrap().to_str().unwrap(), std::process::id()));
    pack(root, &tmp, true);
    fs::rename(&tmp, &out).unwrap();
    out
}

fn find_module(modules: &Path, name: &str) -> PathBuf {
    fn walk(dir: &Path, want: &str) -> Option<PathBuf> {
        for e in fs::read_dir(dir).ok()?.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                if let Some(f) = walk(&p, want) {
                    return Some(f);
                }
            } else if p.file_name().and_then(|n| n.to_str()) == Some(want) {
                return Some(p);
            }
        }
        None
    }
    walk(&modules.join("kernel"), &format!("{name}.ko")).unwrap_or_else(|| {
        panic!("module {name}.ko not found under {} (compressed modules are not supported)", modules.display())
    })
}

fn write_file(path: &Path, data: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// `find . -print0 | cpio --null -o -H newc -R 0:0 [| gzip -9n] > out`
fn pack(dir: &Path, out: &Path, gzip: bool) {
    let cpio = paths::tool("cpio");
    let mut pipeline =
        format!("find . -print0 | LC_ALL=C sort -z | '{}' --null -o -H newc -R 0:0 --quiet", cpio.display());
    if gzip {
        pipeline.push_str(" | gzip -9n");
    }
    pipeline.push_str(&format!(" > '{}'", out.display()));
    let st = Command::new("bash").args(["-o", "pipefail", "-c", &pipeline]).current_dir(dir).status().unwrap();
    assert!(st.success(), "packing the initramfs failed: {pipeline}");
}

/// FNV-1a, for cache keys.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
