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
    /// Where to listen: unix:PATH or tcp:HOST:PORT. Repeat for several.
    #[arg(long, required = true)]
    listen: Vec<Listen>,
}

pub fn run(home: &Home, a: Args) -> Result<()> {
    signals::block_termination().context("blocking SIGTERM/SIGINT")?;
    let mut entry = home.disk(&a.name)?;
    entry.check_usable(&a.name)?;
    let (disk, note) = entry.open_disk(&a.name, CopyMemory::global())?;
    if let Some(note) = note {
        filter::log_line!("lifeboat: {note}");
    }
    let opened = disk.state().opened();
    if opened.newly_suspect {
        filter::log_line!(
            "lifeboat: {}: the host went down while the filter ran (or the state file's bitmaps were damaged); \
             every block is marked to be verified",
            a.name
        );
    } else if opened.was_unclean {
        filter::log_line!(
            "lifeboat: {}: the previous filter stopped without a clean shutdown; its bitmaps are intact",
            a.name
        );
    }
    let disk = Arc::new(disk);
    let status_path = entry.status_path();
    let _ = status_file::record_log_drops(&status_path);
    let control = match ControlServer::start(&entry.control_path(), disk.clone()) {
        Ok(c) => c,
        Err(e) => return Err(close_unserved(disk, e.into())),
    };
    let server = match Server::bind(&a.listen, &a.name, disk.clone()) {
        Ok(s) => s,
        Err(e) => {
            control.stop();
            return Err(close_unserved(disk, e.into()));
        }
    };
    let shutdown = server.shutdown_handle();
    let name = a.name.clone();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let sig = signals::wait_termination();
        filter::log_line!("lifeboat: {name}: {sig}: finishing requests in flight and stopping");
        shutdown.shutdown();
    })?;
    let addrs: Vec<String> = a.listen.iter().map(|l| l.to_string()).collect();
    filter::log_line!("filter {} listening on {}", a.name, addrs.join(" "));
    let served = server.run();
    control.stop();
    let disk =
        Arc::try_unwrap(disk).map_err(|_| anyhow::anyhow!("internal error: disk still referenced at shutdown"))?;
    disk.close()?;
    served.context("serving NBD")?;
    if let Err(e) = status_file::record_log_drops(&status_path) {
        filter::log_line!("lifeboat: warning: {}: {e:#}", a.name);
    }
    filter::log_line!("lifeboat: {}: stopped cleanly", a.name);
    Ok(())
}
