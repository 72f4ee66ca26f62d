//! `lifeboat filter`: serve a protected disk over NBD, recording every write.

use std::sync::Arc;

use anyhow::{Context, Result};
use filter::control::ControlServer;
use filter::copies::CopyMemory;
use filter::nbd::{Listen, Server};

use crate::home::{close_unserved, Home};
use crate::signals;
use crate::status_file;

#[derive(clap::Args)]
pub struct Args {
    /// The protected disk.
    name: String,
    /// Where to listen: unix:PATH or tcp:HOST:PORT. Repeat for several. A TCP
    /// address must be loopback (127.0.0.1, ::1) unless --tls-creds or
    /// --insecure-tcp.
    #[arg(long, required = true)]
    listen: Vec<Listen>,
    /// Require TLS with client certificates on every TCP listen address (a
    /// non-loopback one is then allowed); see --help.
    #[arg(long, value_name = "DIR", long_help = TLS_CREDS_HELP)]
    tls_creds: Option<std::path::PathBuf>,
    /// Serve on a TCP address that is not loopback (0.0.0.0, ::, a LAN
    /// address) without TLS. NBD then has no authentication or encryption:
    /// anyone who reaches the port can read and overwrite the disk. Prefer
    /// --tls-creds, a unix socket, or 127.0.0.1 reached through an ssh tunnel.
    #[arg(long)]
    insecure_tcp: bool,
    #[command(flatten)]
    nbd: NbdLimits,
}

/// The long help of `--tls-creds`, shared by `filter` and `protect`.
pub const TLS_CREDS_HELP: &str = "Require TLS (NBD STARTTLS, X.509) on every TCP listen address, with mutual \
authentication: a client must present a certificate signed by the CA in DIR, and one without TLS or without such \
a certificate is refused (no plaintext fallback). A non-loopback TCP address is then allowed without \
--insecure-tcp. Unix sockets stay plaintext (only root and the server's user can reach them).

DIR has QEMU's tls-creds-x509 layout, so the directory given to QEMU serves: ca-cert.pem (the CA), \
server-cert.pem (signed by that CA, with the host's name or IP address in its subjectAltName, as QEMU checks it) \
and server-key.pem (mode 0600: a key others can read is refused). Clients use client-cert.pem and client-key.pem \
signed by the same CA. QEMU as the client: -object tls-creds-x509,id=tls0,dir=CLIENTDIR,endpoint=client and \
tls-creds=tls0 on the NBD blockdev (-blockdev driver=nbd,server.type=inet,server.host=HOST,server.port=PORT,\
tls-creds=tls0,...); libnbd: nbds://HOST:PORT/?tls-certificates=CLIENTDIR. The files are checked at start: \
missing, unreadable, a key readable by others, a server certificate not signed by the CA or expired are errors \
that name the file.";

/// Load the TLS credentials in `dir` for the NBD server; errors name the file
/// and the fix.
pub fn load_tls(dir: &std::path::Path) -> Result<Arc<dyn filter::nbd::TlsUpgrade>> {
    Ok(Arc::new(nbd_tls::ServerCreds::load(dir)?))
}

/// The NBD server's guards against clients that connect and hold on
/// (shared by `lifeboat filter` and `lifeboat agent`).
#[derive(clap::Args)]
pub struct NbdLimits {
    /// NBD connections a disk accepts at once; one more is closed as soon as
    /// it is accepted (QEMU opens 1 per disk, nbdcopy up to 8).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// An NBD client that has not finished the handshake this long after
    /// connecting is dropped (30s, 1m, ...). Clients past the handshake are
    /// never timed out.
    #[arg(long, default_value = "10s", value_parser = crate::size::parse_duration)]
    handshake_timeout: u64,
}

impl NbdLimits {
    /// The server options, with `insecure_tcp` as the administrator said.
    pub fn options(&self, insecure_tcp: bool) -> filter::nbd::Options {
        filter::nbd::Options {
            max_connections: self.max_connections as usize,
            handshake_timeout: std::time::Duration::from_secs(self.handshake_timeout),
            insecure_tcp,
            ..filter::nbd::Options::default()
        }
    }
}

/// Raises the open-files limit for a process that serves NBD, and says so
/// (`prefix`: who, e.g. `lifeboat agent`).
pub fn raise_open_files_limit(prefix: &str) {
    match filter::raise_open_files_limit() {
        Ok(l) if l.now > l.before => {
            tracing::info!("{prefix}: open-files limit raised from {} to {}", l.before, l.now)
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("{prefix}: warning: cannot raise the open-files limit: {e}"),
    }
}

/// The warning printed at every start for each address served without
/// authentication to other hosts.
pub fn insecure_warning(name: &str, addr: &filter::nbd::LocalAddr) -> String {
    format!(
        "WARNING: disk {name} is served on {addr}, which is not loopback, with no authentication or encryption \
         (--insecure-tcp): anyone who can reach it can read and overwrite the disk"
    )
}

pub fn run(home: &Home, a: Args) -> Result<()> {
    signals::block_termination().context("blocking SIGTERM/SIGINT")?;
    raise_open_files_limit("lifeboat filter");
    let mut entry = home.disk(&a.name)?;
    entry.check_usable(&a.name)?;
    let (disk, note) = entry.open_disk(&a.name, CopyMemory::global())?;
    if let Some(note) = note {
        tracing::info!(disk = a.name, "lifeboat: {note}");
    }
    let opened = disk.state().opened();
    if opened.newly_suspect {
        tracing::warn!(
            disk = a.name,
            "lifeboat: {}: the host went down while the filter ran (or the state file's bitmaps were damaged); \
             every block is marked to be verified",
            a.name
        );
    } else if opened.was_unclean {
        tracing::warn!(
            disk = a.name,
            "lifeboat: {}: the previous filter stopped without a clean shutdown; its bitmaps are intact",
            a.name
        );
    }
    let profiler = crate::cmd::profile::start(&entry, &disk, &a.name);
    let disk = Arc::new(disk);
    let status_path = entry.status_path();
    let _ = status_file::record_log_drops(&status_path);
    let control = match ControlServer::start(&entry.control_path(), disk.clone()) {
        Ok(c) => c,
        Err(e) => return Err(close_unserved(disk, e.into())),
    };
    let mut options = a.nbd.options(a.insecure_tcp);
    match a.tls_creds.as_deref().map(load_tls).transpose() {
        Ok(tls) => options.tls = tls,
        Err(e) => {
            control.stop();
            return Err(close_unserved(disk, e));
        }
    }
    let tls = options.tls.is_some();
    let server = match Server::bind_with(&a.listen, &a.name, disk.clone(), options) {
        Ok(s) => s,
        Err(e) => {
            control.stop();
            return Err(close_unserved(disk, e.into()));
        }
    };
    for addr in server.local_addrs().iter().filter(|l| l.is_exposed() && !tls) {
        tracing::warn!(disk = a.name, "lifeboat: {}", insecure_warning(&a.name, addr));
    }
    let shutdown = server.shutdown_handle();
    let name = a.name.clone();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let sig = signals::wait_termination();
        tracing::info!(disk = name, "lifeboat: {name}: {sig}: finishing requests in flight and stopping");
        shutdown.shutdown();
    })?;
    let addrs: Vec<String> = a.listen.iter().map(|l| l.to_string()).collect();
    tracing::info!(disk = a.name, "filter {} listening on {}", a.name, addrs.join(" "));
    let served = server.run();
    control.stop();
    // The last interval, up to now, before the disk closes.
    if let Some(p) = profiler {
        p.stop();
    }
    let disk =
        Arc::try_unwrap(disk).map_err(|_| anyhow::anyhow!("internal error: disk still referenced at shutdown"))?;
    disk.close()?;
    served.context("serving NBD")?;
    if let Err(e) = status_file::record_log_drops(&status_path) {
        tracing::warn!(disk = a.name, "lifeboat: warning: {}: {e:#}", a.name);
    }
    tracing::info!(disk = a.name, "lifeboat: {}: stopped cleanly", a.name);
    Ok(())
}
