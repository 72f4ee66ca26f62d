//! The boot health check: a serial-console line and/or a TCP port, within a
//! timeout, failing early if the VM dies.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::launch::Running;
use crate::vmdef::Health;

/// How a health check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every check passed.
    Passed,
    /// A check did not pass; why.
    Failed(String),
}

/// The first complete console line containing `needle` (CR stripped), if any.
pub fn console_line(console: &[u8], needle: &str) -> Option<String> {
    let text = String::from_utf8_lossy(console);
    let complete = match text.rfind('\n') {
        Some(i) => &text[..i],
        None => return None,
    };
    complete.lines().map(|l| l.trim_end_matches('\r')).find(|l| l.contains(needle)).map(str::to_string)
}

/// Whether something accepts a TCP connection at `addr` within `timeout`.
pub fn tcp_accepts(addr: SocketAddr, timeout: Duration) -> bool {
    TcpStream::connect_timeout(&addr, timeout).is_ok()
}

/// Runs the checks of `health` against `vm`, from `started` (the launch):
/// polls until every check has passed, the VM dies, or the timeout passes.
pub fn check(health: &Health, vm: &Running, started: Instant) -> Verdict {
    let deadline = started + Duration::from_secs(health.timeout_seconds);
    let mut serial_ok = health.serial.is_none();
    let mut tcp_ok = health.tcp_port.is_none();
    loop {
        if !serial_ok {
            serial_ok =
                read(&vm.console).is_some_and(|c| console_line(&c, health.serial.as_deref().unwrap_or("")).is_some());
        }
        if !tcp_ok {
            tcp_ok = match vm.health_port {
                Some(port) => tcp_accepts(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(500)),
                None => {
                    return Verdict::Failed(
                        "health.tcp_port is set but the first NIC is not on user networking, so the host cannot \
                         reach the guest's port (map its network to user or isolated, or drop tcp_port)"
                            .into(),
                    )
                }
            };
        }
        if serial_ok && tcp_ok {
            return Verdict::Passed;
        }
        if !vm.alive() {
            return Verdict::Failed(format!(
                "the VM stopped before its health check passed ({})",
                pending(health, serial_ok, tcp_ok)
            ));
        }
        if Instant::now() >= deadline {
            return Verdict::Failed(format!(
                "no pass within {} s ({}); the console is in {}",
                health.timeout_seconds,
                pending(health, serial_ok, tcp_ok),
                vm.console.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pending(health: &Health, serial_ok: bool, tcp_ok: bool) -> String {
    let mut v = Vec::new();
    if !serial_ok {
        v.push(format!("waiting for a console line containing {:?}", health.serial.as_deref().unwrap_or("")));
    }
    if !tcp_ok {
        v.push(format!("waiting for guest TCP port {}", health.tcp_port.unwrap_or(0)));
    }
    v.join("; ")
}

fn read(p: &Path) -> Option<Vec<u8>> {
    std::fs::read(p).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_lines_count() {
        assert_eq!(console_line(b"boot\r\nlogin: ", "login:"), None);
        assert_eq!(console_line(b"boot\r\nhost login: \r\n", "login:"), Some("host login: ".into()));
        assert_eq!(console_line(b"", "x"), None);
    }

    #[test]
    fn tcp_check_sees_a_listener_and_its_absence() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert!(tcp_accepts(addr, Duration::from_secs(1)));
        drop(l);
        assert!(!tcp_accepts(addr, Duration::from_millis(200)));
    }
}
