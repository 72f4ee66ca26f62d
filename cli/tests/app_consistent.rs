//! App-consistent points through the user's pre- and post-cut hooks
//! (issue 4, item 5), with real `lifeboat ship` processes:
//!
//! * a due point runs the pre hook, cuts, runs the post hook: the point is
//!   listed app-consistent and its cut time lies between the two hooks; the
//!   hooks get the VM, disk and hook in their environment; the next cycle
//!   within the interval is crash-consistent and runs no hook;
//! * a failing pre hook still gives a (crash-consistent) point, says why,
//!   and still runs the post hook (a half-done quiesce is undone);
//! * a cycle SIGKILLed while the guest is quiesced (the pre hook kills its
//!   own `lifeboat`): the watchdog runs the post hook once the timeout has
//!   passed, no point is left half-made, and the next cycle is app-consistent.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use vm_tests::lifeboat::Scratch;
use vm_tests::replicate::{arg, PointInfo};

fn script(path: &std::path::Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn setup(prefix: &str, pre_body: &str) -> Scratch {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), prefix);
    fs::write(s.path("d.img"), vm_tests::pseudo_random(4 << 20, 7)).unwrap();
    s.home.key_new(&s.path("k.key"));
    s.home.vault_init(&s.path("vault"), &s.path("k.key"));
    s.home.protect_replicated("d", &s.path("d.img"), 64 * 1024, &s.path("vault"), &s.path("k.key"));
    let (pre, post) = (s.path("pre.sh"), s.path("post.sh"));
    script(
        &pre,
        &format!(
            "{pre_body}\ndate +%s%N >> {}\necho \"$LIFEBOAT_VM $LIFEBOAT_DISK $LIFEBOAT_HOOK\" >> {}\n",
            s.path("pre.log").display(),
            s.path("env.log").display()
        ),
    );
    script(&post, &format!("date +%s%N >> {}\n", s.path("post.log").display()));
    s.home.run_ok(&[
        "vm",
        "define",
        "app",
        "--disk",
        "d",
        "--app-every",
        "1h",
        "--pre-hook",
        arg(&pre),
        "--post-hook",
        arg(&post),
        "--hook-timeout",
        "2s",
    ]);
    s
}

fn times(path: &std::path::Path) -> Vec<u64> {
    fs::read_to_string(path).unwrap_or_default().lines().map(|l| l.trim().parse().unwrap()).collect()
}

fn points(s: &Scratch) -> Vec<PointInfo> {
    PointInfo::parse_list(&s.home.run_ok(&["points", "d", "--json"]).stdout)
}

#[test]
fn a_due_point_is_cut_between_the_hooks_and_marked_app_consistent() {
    let s = setup("lb-app-", "");
    s.home.ship("d");
    let p = points(&s);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].consistency, "app-consistent", "{p:?}");
    let (pre, post) = (times(&s.path("pre.log")), times(&s.path("post.log")));
    assert_eq!((pre.len(), post.len()), (1, 1));
    assert!(pre[0] < p[0].cut_time_ns && p[0].cut_time_ns < post[0], "the cut is not between the hooks");
    assert_eq!(fs::read_to_string(s.path("env.log")).unwrap(), "app d pre\n");
    // Within the hour: crash-consistent, no hook.
    s.home.ship("d");
    let p = points(&s);
    assert_eq!(p[1].consistency, "crash-consistent", "{p:?}");
    assert_eq!(times(&s.path("pre.log")).len(), 1, "a hook ran for a point that was not due");
}

#[test]
fn a_failing_pre_hook_gives_a_crash_consistent_point_and_still_runs_the_post_hook() {
    let s = setup("lb-app-fail-", "echo 'database did not flush' >&2; exit 4");
    let o = s.home.run(&["ship", "d", "--once"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("crash-consistent") && err.contains("database did not flush"), "{err}");
    assert_eq!(points(&s)[0].consistency, "crash-consistent");
    assert_eq!(times(&s.path("post.log")).len(), 1, "the post hook did not run after a failed pre hook");
}

#[test]
fn a_cycle_killed_while_quiesced_is_resumed_by_the_watchdog() {
    let flag = "/tmp/lb-app-kill-flag";
    let s = setup(
        "lb-app-kill-",
        &format!("if [ -e {flag}-$PPID ] || [ -e {flag} ]; then rm -f {flag}; kill -9 $PPID; sleep 1; fi"),
    );
    fs::write(flag, b"").unwrap();
    let o = s.home.run(&["ship", "d", "--once"]);
    assert!(!o.status.success(), "the cycle was not killed");
    assert!(points(&s).is_empty(), "a killed cycle left a point");
    let t = Instant::now();
    while times(&s.path("post.log")).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "the watchdog never ran the post hook");
        std::thread::sleep(Duration::from_millis(50));
    }
    let waited = t.elapsed();
    assert!(waited < Duration::from_secs(5), "the post hook came {waited:?} after the kill");
    // The next cycle is app-consistent.
    s.home.ship("d");
    assert_eq!(points(&s)[0].consistency, "app-consistent");
}
