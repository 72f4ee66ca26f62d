//! A TCP proxy that injects network faults between a protected host and
//! its vault server (issue 14, point 4): refused connections, a stalled
//! link, connections reset mid-transfer, a slow link and a long partition.
//!
//! Tests put it between `lifeboat` and `lifeboat vault serve` on loopback,
//! set a [`Fault`], and synchronise on what has crossed it
//! ([`FaultProxy::wait_up`]: "a megabyte of the pack has gone"), never on
//! sleeps. Plain threads and blocking sockets: two pumps per connection.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards everything.
    None,
    /// Accepts new connections and closes them at once (a server that is
    /// down behind a load balancer); open connections carry on.
    Refuse,
    /// Forwards nothing either way and holds every connection open (a
    /// black hole: packets dropped, no reset); new connections are accepted
    /// and stall too.
    Stall,
    /// Resets every connection (TCP RST) once this many more bytes have
    /// gone from client to server, then forwards again.
    ResetAfterUp(u64),
    /// Forwards at most this many bytes per second each way.
    Slow(u64),
    /// Forwards this many more bytes client → server, then becomes
    /// [`Fault::Stall`] (a link that dies mid-transfer without a reset).
    StallAfterUp(u64),
}

#[derive(Debug)]
struct State {
    fault: Fault,
    /// Bytes forwarded client → server and server → client, ever.
    up: u64,
    down: u64,
    accepted: u64,
    resets: u64,
    /// Bumped on every reset: pumps of an older epoch end their connection.
    epoch: u64,
    /// Bytes up at which a `ResetAfterUp` fires.
    reset_at: Option<u64>,
    /// Bytes up at which a `StallAfterUp` stalls the link.
    stall_at: Option<u64>,
    /// One-way delay added to every byte, each way (half a round trip).
    delay: Duration,
    stopped: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running proxy; stopped (its listener and connections closed) on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    listener: Arc<TcpListener>,
    accept: Option<thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy on a free loopback port forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = Arc::new(TcpListener::bind("127.0.0.1:0")?);
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                fault: Fault::None,
                up: 0,
                down: 0,
                accepted: 0,
                resets: 0,
                epoch: 0,
                reset_at: None,
                stall_at: None,
                delay: Duration::ZERO,
                stopped: false,
            }),
            changed: Condvar::new(),
        });
        let accept = {
            let (shared, listener) = (shared.clone(), listener.clone());
            thread::spawn(move || accept_loop(&listener, upstream, &shared))
        };
        Ok(FaultProxy { addr, shared, listener, accept: Some(accept) })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the fault from now on.
    pub fn set(&self, fault: Fault) {
        let mut s = self.shared.lock();
        s.fault = fault;
        s.reset_at = match fault {
            Fault::ResetAfterUp(n) => Some(s.up + n),
            _ => None,
        };
        s.stall_at = match fault {
            Fault::StallAfterUp(n) => Some(s.up + n),
            _ => None,
        };
        self.shared.changed.notify_all();
    }

    /// Delays every byte by `one_way` in each direction from now on (a
    /// round trip of twice that), without limiting throughput: data in
    /// flight is queued, not serialised behind the delay. (No `netem` in
    /// this kernel, so the proxy is the delay line.)
    pub fn set_delay(&self, one_way: Duration) {
        self.shared.lock().delay = one_way;
    }

    /// Resets every open connection now.
    pub fn reset_all(&self) {
        let mut s = self.shared.lock();
        s.epoch += 1;
        s.resets += 1;
        self.shared.changed.notify_all();
    }

    /// Bytes forwarded client → server so far.
    pub fn up(&self) -> u64 {
        self.shared.lock().up
    }

    /// Bytes forwarded server → client so far.
    pub fn down(&self) -> u64 {
        self.shared.lock().down
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.lock().accepted
    }

    /// Resets done so far (by `reset_all` or a `ResetAfterUp`).
    pub fn resets(&self) -> u64 {
        self.shared.lock().resets
    }

    /// Waits until at least `n` bytes have gone client → server in all;
    /// false if `timeout` passed first.
    pub fn wait_up(&self, n: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.up >= n)
    }

    /// Waits until `resets()` reaches `n`; false if `timeout` passed first.
    pub fn wait_resets(&self, n: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.resets >= n)
    }

    fn wait_until(&self, timeout: Duration, done: impl Fn(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.shared.lock();
        while !done(&s) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self.shared.changed.wait_timeout(s, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        true
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        {
            let mut s = self.shared.lock();
            s.stopped = true;
            s.epoch += 1;
            self.shared.changed.notify_all();
        }
        let _ = system::socket::shutdown_listener(&*self.listener);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        let Ok(client) = client else { break };
        let epoch = {
            let mut s = shared.lock();
            if s.stopped {
                break;
            }
            s.accepted += 1;
            shared.changed.notify_all();
            if s.fault == Fault::Refuse {
                drop(client);
                continue;
            }
            s.epoch
        };
        let Ok(server) = TcpStream::connect(upstream) else {
            let _ = system::socket::abort_on_close(&client);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { continue };
        let sh = shared.clone();
        thread::spawn(move || pump(client, server, true, epoch, &sh));
        let sh = shared.clone();
        thread::spawn(move || pump(s2, c2, false, epoch, &sh));
    }
}

/// Copies `from` → `to` under the faults; `up` says which way this is.
/// A reader (this thread) applies stalls, resets, the slow rate and counts;
/// a writer thread delivers each chunk once its delay has passed. Reads use
/// a short timeout so that a stall, a reset or a stop is noticed while the
/// peer is silent.
fn pump(mut from: TcpStream, to: TcpStream, up: bool, epoch: u64, shared: &Shared) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let reset = |from: &TcpStream, to: &TcpStream| {
        let _ = system::socket::abort_on_close(from);
        let _ = system::socket::abort_on_close(to);
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<(Instant, Vec<u8>)>(256);
    let writer = {
        let Ok(mut to) = to.try_clone() else { return reset(&from, &to) };
        thread::spawn(move || {
            for (due, chunk) in rx {
                let wait = due.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    thread::sleep(wait); // the delay line itself, not a synchronisation
                }
                if to.write_all(&chunk).is_err() {
                    return false;
                }
            }
            true
        })
    };
    let mut buf = vec![0u8; 64 << 10];
    // Bytes read past a `StallAfterUp` mark, forwarded once the stall lifts.
    let mut held: Vec<u8> = Vec::new();
    let ended_cleanly = loop {
        // Wait while stalled; leave on a reset or a stop.
        let (fault, delay) = {
            let mut s = shared.lock();
            loop {
                if s.epoch != epoch || s.stopped {
                    break;
                }
                if s.fault != Fault::Stall {
                    break;
                }
                s = shared.changed.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
            if s.epoch != epoch || s.stopped {
                drop(s);
                break false;
            }
            (s.fault, s.delay)
        };
        if !held.is_empty() && tx.send((Instant::now() + delay, std::mem::take(&mut held))).is_err() {
            break false;
        }
        let want = match fault {
            Fault::Slow(rate) => buf.len().min(usize::try_from(rate / 20).unwrap_or(usize::MAX).max(1)),
            _ => buf.len(),
        };
        let n = match from.read(&mut buf[..want]) {
            Ok(0) => break true,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(_) => break false,
        };
        // A reset due within this chunk forwards only the bytes before it.
        // Checked and counted under one lock, so that of two connections
        // crossing the mark at once exactly one fires.
        let mut len = n;
        let mut fire = false;
        // The delay as it is now: it may have been set while the read
        // waited (a test sets it after connecting).
        let delay = {
            let mut s = shared.lock();
            if s.epoch != epoch {
                drop(s);
                break false;
            }
            // Stalled while this read waited: the bytes are held, like those
            // past a `StallAfterUp` mark, and cross once the stall lifts.
            if s.fault == Fault::Stall {
                held.extend_from_slice(&buf[..n]);
                continue;
            }
            if up {
                if let Some(at) = s.reset_at {
                    let left = at.saturating_sub(s.up);
                    if (n as u64) >= left {
                        len = usize::try_from(left).unwrap_or(n);
                        fire = true;
                    }
                }
                if let Some(at) = s.stall_at {
                    let left = at.saturating_sub(s.up);
                    if (n as u64) >= left {
                        len = usize::try_from(left).unwrap_or(n);
                        held = buf[len..n].to_vec();
                        s.stall_at = None;
                        s.fault = Fault::Stall;
                    }
                }
                s.up += len as u64;
            } else {
                s.down += len as u64;
            }
            if fire {
                s.reset_at = None;
                s.fault = Fault::None;
                s.epoch += 1;
                s.resets += 1;
            }
            shared.changed.notify_all();
            s.delay
        };
        if len > 0 && tx.send((Instant::now() + delay, buf[..len].to_vec())).is_err() {
            break false;
        }
        if fire {
            break false;
        }
        if let Fault::Slow(rate) = fault {
            // Pace: this chunk's share of a second at the rate.
            thread::sleep(Duration::from_secs_f64(len as f64 / rate.max(1) as f64));
        }
    };
    drop(tx);
    let delivered = writer.join().unwrap_or(false);
    if ended_cleanly && delivered {
        let _ = to.shutdown(Shutdown::Write);
    } else {
        reset(&from, &to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback.
    fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { break };
                thread::spawn(move || {
                    let mut r = c.try_clone().unwrap();
                    let _ = io::copy(&mut r, &mut c);
                });
            }
        });
        addr
    }

    fn round_trip(c: &mut TcpStream, data: &[u8]) -> io::Result<Vec<u8>> {
        c.write_all(data)?;
        let mut back = vec![0; data.len()];
        c.read_exact(&mut back)?;
        Ok(back)
    }

    #[test]
    fn forwards_both_ways_and_counts() {
        let p = FaultProxy::start(echo()).unwrap();
        let mut c = TcpStream::connect(p.addr()).unwrap();
        assert_eq!(round_trip(&mut c, b"hello").unwrap(), b"hello");
        assert!(p.wait_up(5, Duration::from_secs(10)));
        assert_eq!(p.accepted(), 1);
    }

    #[test]
    fn reset_after_up_resets_mid_transfer_then_forwards_again() {
        let p = FaultProxy::start(echo()).unwrap();
        let mut c = TcpStream::connect(p.addr()).unwrap();
        p.set(Fault::ResetAfterUp(100_000));
        let big = vec![3u8; 1 << 20];
        let r = round_trip(&mut c, &big);
        assert!(r.is_err(), "a 1 MiB round trip crossed a reset at 100 kB");
        assert!(p.wait_resets(1, Duration::from_secs(10)));
        assert_eq!(p.up(), 100_000, "exactly the bytes before the reset went up");
        let mut c = TcpStream::connect(p.addr()).unwrap();
        assert_eq!(round_trip(&mut c, b"again").unwrap(), b"again");
    }

    #[test]
    fn stall_holds_then_releases() {
        let p = FaultProxy::start(echo()).unwrap();
        let mut c = TcpStream::connect(p.addr()).unwrap();
        p.set(Fault::Stall);
        c.write_all(b"held").unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut b = [0u8; 4];
        assert!(c.read_exact(&mut b).is_err(), "nothing crosses a stalled link");
        assert_eq!(p.up(), 0);
        p.set(Fault::None);
        c.set_read_timeout(None).unwrap();
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"held");
    }

    #[test]
    fn delay_adds_latency_without_serialising() {
        let p = FaultProxy::start(echo()).unwrap();
        let mut c = TcpStream::connect(p.addr()).unwrap();
        p.set_delay(Duration::from_millis(50));
        let t = Instant::now();
        assert_eq!(round_trip(&mut c, b"ping").unwrap(), b"ping");
        let rtt = t.elapsed();
        assert!(rtt >= Duration::from_millis(100), "a round trip through 50 ms each way took {rtt:?}");
        // 40 requests in flight at once still take about one round trip's
        // delay in all, not forty.
        let t = Instant::now();
        let mut r = c.try_clone().unwrap();
        let reader = thread::spawn(move || {
            let mut back = vec![0u8; 40 * 1000];
            r.read_exact(&mut back).map(|()| back.len())
        });
        for _ in 0..40 {
            c.write_all(&[9u8; 1000]).unwrap();
        }
        assert_eq!(reader.join().unwrap().unwrap(), 40_000);
        let pipelined = t.elapsed();
        assert!(
            pipelined >= Duration::from_millis(100) && pipelined < Duration::from_millis(100) * 20,
            "{pipelined:?}"
        );
    }

    #[test]
    fn refuse_closes_new_connections() {
        let p = FaultProxy::start(echo()).unwrap();
        p.set(Fault::Refuse);
        let mut c = TcpStream::connect(p.addr()).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(c.read(&mut b).unwrap_or(0), 0, "closed at once");
    }

    #[test]
    fn reset_all_ends_open_connections() {
        let p = FaultProxy::start(echo()).unwrap();
        let mut c = TcpStream::connect(p.addr()).unwrap();
        assert_eq!(round_trip(&mut c, b"x").unwrap(), b"x");
        p.reset_all();
        let mut b = [0u8; 1];
        let r = c.read(&mut b);
        assert!(matches!(r, Ok(0) | Err(_)), "the connection ended: {r:?}");
    }
}
