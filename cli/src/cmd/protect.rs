//! `lifeboat protect`: start protecting a disk image.

use std::path::PathBuf;

use anyhow::Result;

use crate::home::{Home, Retention};
pub use crate::protecting::refuse_exposed;
use crate::protecting::{Replicate, Request};
use crate::size::{parse_duration, parse_size};

#[derive(clap::Args)]
pub struct Args {
    /// Name of the disk: its directory in the home and its NBD export name.
    name: String,
    /// The raw disk image (file or block device) the VM uses. It must open
    /// read-write (not immutable), and not be another disk's image (same
    /// device and inode, through symlinks and hard links).
    #[arg(long)]
    image: PathBuf,
    /// Tracking granularity: a power of two from 4KiB to 1MiB. Smaller blocks
    /// ship less per small write; larger ones keep the bitmap smaller.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    block_size: u64,
    /// The vault to replicate to (see `lifeboat vault init`). VAULT: a
    /// directory, or lifeboat://HOST:PORT/VAULT for a vault server. Given for
    /// an already protected disk, adds or changes its replication settings.
    #[arg(long, requires = "key", value_name = "VAULT", value_parser = crate::vault_open::location_parser())]
    vault: Option<vault::Location>,
    /// The customer key file (see `lifeboat key new`).
    #[arg(long, requires = "vault")]
    key: Option<PathBuf>,
    /// Cycle interval, the recovery point objective: 30s, 5m, 15m or any duration.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    rpo: u64,
    #[command(flatten)]
    ladder: LadderArgs,
    /// Thin the --keep-recent stretch for a seconds-level RPO: every point of
    /// the last minute is kept, older recent points only as the newest of
    /// each DURATION (clock buckets), so a day of 5 s points costs about
    /// what a day of 30 s points does. Default: 30s when --rpo is under 30
    /// seconds, otherwise off (`off` or 0 turns it off).
    #[arg(long, value_name = "DURATION", value_parser = parse_thin)]
    thin_recent: Option<u64>,
    /// Store every block as it is. By default a block is compressed (zstd,
    /// level 1) before it is sealed when that saves at least an eighth of
    /// it; blocks that do not compress (media, encrypted or compressed
    /// files) are recognised from a small sample and cost little. Turn it
    /// off to save the CPU on a disk known not to compress. Recorded in
    /// disk.toml (`compress = false`).
    #[arg(long, requires = "vault")]
    no_compress: bool,
    /// Where `lifeboat agent` serves the disk over NBD: unix:PATH or
    /// tcp:HOST:PORT; repeat for several. Default: unix:HOME/disks/NAME/nbd.sock.
    /// A TCP address must be loopback (127.0.0.1, ::1) unless --tls-creds or
    /// --insecure-tcp.
    #[arg(long)]
    listen: Vec<filter::nbd::Listen>,
    /// Let the agent require TLS with client certificates on the --listen
    /// TCP addresses (recorded in disk.toml as `tls_creds`); a non-loopback
    /// one is then allowed. The directory is checked now and at every agent
    /// start; see below.
    #[arg(long, value_name = "DIR", requires = "listen", long_help = crate::cmd::filter::TLS_CREDS_HELP)]
    tls_creds: Option<PathBuf>,
    /// Let the agent serve the disk on a --listen TCP address that is not
    /// loopback (0.0.0.0, ::, a LAN address) without TLS. NBD then has no
    /// authentication or encryption: anyone who reaches the port can read and
    /// overwrite the disk (prefer --tls-creds). Recorded in disk.toml (`insecure_tcp`); the agent warns at every
    /// start. Give it again with each --listen change that needs it.
    #[arg(long, requires = "listen")]
    insecure_tcp: bool,
    /// Replace the disk's state file with a new one that marks every block to
    /// be verified (after a damaged state file was refused, or to adopt a new
    /// file put at the image's path). The old file is kept beside it as
    /// state.replaced-<time>.
    #[arg(long)]
    reset_state: bool,
    /// Record the disk's churn profile while it is served (`lifeboat
    /// profile show NAME`): on or off. On by default for a new disk; given
    /// for one already protected, changes only this. Recorded in disk.toml
    /// (`profile = false` when off).
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    profile: Option<bool>,
}

/// The retention ladder's flags, shared by `protect` (what a disk keeps)
/// and `plan-capacity` (what its vault storage is planned for).
#[derive(clap::Args)]
pub struct LadderArgs {
    /// Keep every point cut within this long (the bottom of the retention ladder).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub keep_recent: u64,
    /// Then keep the newest point of each of this many clock hours.
    #[arg(long, default_value_t = 24)]
    pub keep_hourly: u32,
    /// Then keep the newest point of each of this many days (15 or more for a long ladder).
    #[arg(long, default_value_t = 0)]
    pub keep_daily: u32,
}

/// `on` or `off`.
fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{s:?}: say on or off")),
    }
}

/// `--thin-recent`: a duration, or `off`/`0` (seconds; 0 is off).
fn parse_thin(s: &str) -> Result<u64, String> {
    match s {
        "off" | "0" => Ok(0),
        _ => parse_duration(s),
    }
}

pub fn run(home: &Home, a: Args) -> Result<()> {
    crate::protecting::protect(home, &a.into(), &mut std::io::stdout())
}

impl From<Args> for Request {
    fn from(a: Args) -> Request {
        let replicate = match (a.vault, a.key) {
            (Some(vault), Some(key)) => Some(Replicate {
                vault,
                key,
                rpo_seconds: a.rpo,
                retention: Retention {
                    recent_seconds: a.ladder.keep_recent,
                    hourly: a.ladder.keep_hourly,
                    daily: a.ladder.keep_daily,
                    thin_seconds: a.thin_recent.unwrap_or(if a.rpo < 30 { 30 } else { 0 }),
                },
                compress: !a.no_compress,
            }),
            _ => None,
        };
        Request {
            name: a.name,
            image: a.image,
            block_size: a.block_size,
            replicate,
            listen: a.listen,
            tls_creds: a.tls_creds,
            insecure_tcp: a.insecure_tcp,
            reset_state: a.reset_state,
            profile: a.profile,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[derive(clap::Parser)]
    struct Protect {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Request {
        <Protect as clap::Parser>::try_parse_from(std::iter::once("protect").chain(argv.iter().copied()))
            .unwrap()
            .args
            .into()
    }

    /// The typed request's defaults are the flags' defaults: failback's
    /// protect (a request, no flags) protects as `lifeboat protect` would.
    #[test]
    fn request_defaults_are_the_flag_defaults() {
        assert_eq!(parse(&["d", "--image", "/i"]), Request::new("d", Path::new("/i")));
        let mut with_vault = Request::new("d", Path::new("/i"));
        with_vault.replicate = Some(Replicate::new(Path::new("/v"), Path::new("/k")));
        assert_eq!(parse(&["d", "--image", "/i", "--vault", "/v", "--key", "/k"]), with_vault);
    }

    #[test]
    fn every_flag_reaches_the_request() {
        let r = parse(&[
            "d",
            "--image",
            "/i",
            "--block-size",
            "4KiB",
            "--vault",
            "/v",
            "--key",
            "/k",
            "--rpo",
            "30s",
            "--keep-recent",
            "2h",
            "--keep-hourly",
            "3",
            "--keep-daily",
            "4",
            "--listen",
            "tcp:127.0.0.1:10809",
            "--insecure-tcp",
            "--reset-state",
        ]);
        assert_eq!(r.block_size, 4096);
        assert_eq!(
            r.replicate,
            Some(Replicate {
                vault: vault::Location::Path("/v".into()),
                key: "/k".into(),
                rpo_seconds: 30,
                retention: Retention { recent_seconds: 7200, hourly: 3, daily: 4, thin_seconds: 0 },
                compress: true,
            })
        );
        assert_eq!(r.listen.len(), 1);
        assert!(r.insecure_tcp && r.reset_state);
        let off = parse(&["d", "--image", "/i", "--vault", "/v", "--key", "/k", "--no-compress"]);
        assert!(!off.replicate.unwrap().compress);
    }

    /// A seconds-level RPO thins the recent points to one per 30 s unless
    /// told otherwise; a slower one keeps every recent point.
    #[test]
    fn a_seconds_level_rpo_thins_the_recent_points() {
        let thin = |extra: &[&str]| {
            let mut args = vec!["d", "--image", "/i", "--vault", "/v", "--key", "/k"];
            args.extend_from_slice(extra);
            parse(&args).replicate.unwrap().retention.thin_seconds
        };
        assert_eq!(thin(&[]), 0);
        assert_eq!(thin(&["--rpo", "30s"]), 0);
        assert_eq!(thin(&["--rpo", "5s"]), 30);
        assert_eq!(thin(&["--rpo", "1s", "--thin-recent", "10s"]), 10);
        assert_eq!(thin(&["--rpo", "5s", "--thin-recent", "0"]), 0);
        assert_eq!(thin(&["--rpo", "5s", "--thin-recent", "off"]), 0);
        assert_eq!(thin(&["--thin-recent", "1m"]), 60);
    }
}
