//! Issue 12, hole 9: what Lifeboat runs as root must be as private as the
//! key file. With the real `lifeboat` binary:
//!
//! * `vm define` refuses a world-writable pre-cut hook, a hook in a
//!   group-writable directory, a hook owned by `nobody`, and a boot kernel
//!   writable by others; each message names the path, the mode or owner
//!   found and the command that fixes it;
//! * a hook made world-writable after `vm define` does not run: the next
//!   cycle still commits a crash-consistent point, with a warning naming the
//!   hook, and neither hook ran;
//! * a plan whose script is writable by others is refused by `plan validate`;
//! * a failover whose kernel was made writable by others after `vm define`
//!   restores the disk and refuses to boot it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use vm_tests::lifeboat::Scratch;
use vm_tests::replicate::{arg, assert_refused, PointInfo};

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

/// A script at `path` that appends its name to `LOG` when it runs.
fn script(path: &Path, log: &Path) {
    fs::write(path, format!("#!/bin/sh\necho $LIFEBOAT_HOOK >> {}\n", log.display())).unwrap();
    chmod(path, 0o755);
}

/// A home with disk `d` replicating to a vault, one point shipped, and a
/// pre and post hook (0755) in the scratch directory (0700, root's).
fn setup(prefix: &str) -> Scratch {
    let bin: std::path::PathBuf =
        std::env::var_os("LIFEBOAT_BIN").map_or_else(|| env!("CARGO_BIN_EXE_lifeboat").into(), Into::into);
    let s = Scratch::new(bin, prefix);
    fs::write(s.path("d.img"), vm_tests::pseudo_random(4 << 20, 5)).unwrap();
    s.home.key_new(&s.path("k.key"));
    s.home.vault_init(&s.path("vault"), &s.path("k.key"));
    s.home.protect_replicated("d", &s.path("d.img"), 64 * 1024, &s.path("vault"), &s.path("k.key"));
    s.home.ship("d");
    script(&s.path("pre.sh"), &s.path("hooks.log"));
    script(&s.path("post.sh"), &s.path("hooks.log"));
    s
}

fn define_with_hooks(s: &Scratch, pre: &Path) -> std::process::Output {
    s.home.run(&[
        "vm",
        "define",
        "app",
        "--disk",
        "d",
        "--app-every",
        "1s",
        "--pre-hook",
        arg(pre),
        "--post-hook",
        arg(&s.path("post.sh")),
    ])
}

#[test]
fn vm_define_refuses_hooks_and_a_kernel_that_others_could_change() {
    let s = setup("lb-trust-def-");
    let pre = s.path("pre.sh");

    chmod(&pre, 0o777);
    let o = define_with_hooks(&s, &pre);
    let fix = format!("chmod go-w {}", pre.display());
    assert_refused(&o, "a world-writable hook", &["pre-cut hook", "writable by group and others", "0777", &fix]);
    chmod(&pre, 0o755);

    let dir = s.path("hooks");
    fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o775);
    let in_dir = dir.join("pre.sh");
    script(&in_dir, &s.path("hooks.log"));
    let o = define_with_hooks(&s, &in_dir);
    let fix = format!("chmod go-w {}", dir.display());
    assert_refused(&o, "a hook in a group-writable directory", &["writable by group", "0775", &fix]);

    std::os::unix::fs::chown(&pre, Some(65534), None).unwrap();
    let o = define_with_hooks(&s, &pre);
    let fix = format!("chown root {}", pre.display());
    assert_refused(&o, "a hook owned by nobody", &["owned by uid 65534", &fix]);

    let kernel = s.path("vmlinuz");
    fs::write(&kernel, b"not a kernel").unwrap();
    chmod(&kernel, 0o646);
    let o = s.home.run(&["vm", "define", "k", "--disk", "d", "--kernel", arg(&kernel)]);
    let fix = format!("chmod go-w {}", kernel.display());
    assert_refused(&o, "a world-writable kernel", &["boot kernel", "writable by others", &fix]);
    assert!(s.home.run_ok(&["vm", "list"]).stdout.is_empty(), "a refused VM was defined");
}

#[test]
fn a_hook_loosened_after_vm_define_does_not_run_and_the_point_is_crash_consistent() {
    let s = setup("lb-trust-run-");
    let pre = s.path("pre.sh");
    let o = define_with_hooks(&s, &pre);
    assert!(o.status.success(), "vm define: {}", String::from_utf8_lossy(&o.stderr));
    chmod(&pre, 0o757);

    let o = s.home.run(&["ship", "d", "--once"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "the cycle failed: {err}");
    assert!(
        err.contains("crash-consistent") && err.contains(&format!("{} is writable by others", pre.display())),
        "no warning naming the loose hook: {err}"
    );
    let points = PointInfo::parse_list(&s.home.run_ok(&["points", "d", "--json"]).stdout);
    assert_eq!(points.last().map(|p| p.consistency.as_str()), Some("crash-consistent"), "{points:?}");
    let ran = fs::read_to_string(s.path("hooks.log")).unwrap_or_default();
    assert!(ran.is_empty(), "a hook ran although the pre hook is writable by others: {ran:?}");
}

#[test]
fn plan_validate_refuses_a_script_others_could_change() {
    let s = setup("lb-trust-plan-");
    let step = s.path("ready.sh");
    script(&step, &s.path("plan.log"));
    chmod(&step, 0o722);
    let plan = s.path("shop.toml");
    fs::write(
        &plan,
        format!(
            "name = \"shop\"\n[[step]]\ngroup = \"db\"\nvms = [\"db1\"]\n[[step]]\nscript = \"{}\"\n",
            step.display()
        ),
    )
    .unwrap();
    let o = s.home.run(&["plan", "validate", arg(&plan)]);
    let fix = format!("chmod go-w {}", step.display());
    assert_refused(&o, "a world-writable plan script", &["plan script", "writable by group and others", &fix]);
}

#[test]
fn a_failover_refuses_a_kernel_made_loose_after_vm_define() {
    let s = setup("lb-trust-boot-");
    let kernel = s.path("vmlinuz");
    fs::write(&kernel, b"not a kernel").unwrap();
    chmod(&kernel, 0o644);
    s.home.run_ok(&["vm", "define", "k", "--disk", "d", "--kernel", arg(&kernel), "--health-serial", "ready"]);
    s.home.ship("d");
    chmod(&kernel, 0o666);
    let o = s.home.run(&["failover", "k", "--unplanned"]);
    let fix = format!("chmod go-w {}", kernel.display());
    assert_refused(&o, "a world-writable kernel at boot", &["boot kernel", "writable by group and others", &fix]);
    let restored = s.path("home").join("failovers/k/disks/d.raw");
    assert!(restored.is_file(), "the failover did not get as far as the boot");
    s.home.run_ok(&["failover", "cleanup", "k"]);
}
