//! `lifeboat vault`: create and check a vault.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use vault::{Location, Opener, Vault};

pub use crate::vault_open::open;

use crate::keyfile;

#[derive(Subcommand)]
pub enum Command {
    /// Create a vault in a directory (a local disk or a mounted share at the
    /// recovery site), in a vault server's vault, or in a cloud bucket or
    /// container (which must exist). The vault stores only the key's
    /// fingerprint, never the key.
    Init {
        /// VAULT: a directory, lifeboat://HOST:PORT/VAULT for a vault
        /// server, s3://BUCKET[/PREFIX] or az://ACCOUNT/CONTAINER[/PREFIX]. A
        /// directory is created if missing; an existing one must be empty.
        #[arg(value_name = "VAULT", value_parser = crate::vault_open::location_parser())]
        dir: Location,
        /// The customer key file the vault will accept.
        #[arg(long)]
        key: PathBuf,
        /// Against ransomware: refuse unless the store itself keeps every
        /// object at least DAYS days after it is written, whoever asks to
        /// delete it: an S3 bucket with Object Lock and a default retention
        /// of at least DAYS days, or an Azure container with an immutability
        /// policy. Recorded in the vault; `vault check` says when the
        /// store's protection falls below it.
        #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..))]
        immutable: Option<u32>,
        /// The cipher that seals every block stored in the vault, fixed for
        /// the vault's life: aes-256-gcm (about six times faster where the
        /// CPU has AES and carry-less multiply instructions: x86-64 with
        /// AES-NI and PCLMULQDQ, ARMv8 with AES and PMULL) or
        /// xchacha20-poly1305 (fast in software; the cipher of vaults made
        /// before lifeboat offered a choice). Both are 256-bit
        /// authenticated encryption, and every lifeboat since restores
        /// both. [default:
        /// aes-256-gcm where this CPU accelerates it, else xchacha20-poly1305]
        #[arg(long, value_name = "CIPHER", value_parser = parse_cipher)]
        cipher: Option<disk_format::Cipher>,
    },
    /// Delete the map pages and packs no point uses any more (after `lifeboat
    /// prune`), and objects a process killed mid-write left unfinished more
    /// than a day ago. Needs no key. A replication cycle and a collection
    /// never run at once: without --wait, gc refuses while a cycle runs. At a
    /// recovery site whose hosts replicate continuously, schedule
    /// `lifeboat prune …` then `lifeboat vault gc VAULT-DIR --wait 10m`.
    Gc {
        /// VAULT: a directory (at a recovery site, the served vault's
        /// directory: hosts cannot delete through the server).
        #[arg(value_name = "VAULT", value_parser = crate::vault_open::location_parser())]
        dir: Location,
        /// Report what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// While replication cycles hold the vault, wait up to DURATION
        /// (`10m`, `1h`) for a gap between them, looking once a second,
        /// instead of refusing at once. Cycles that start while the
        /// collection runs back off and run again a few seconds later;
        /// nothing they hold is lost.
        #[arg(long, value_name = "DURATION", value_parser = crate::size::parse_duration)]
        wait: Option<u64>,
    },
    /// Scrub a vault: the structure and name of every object and the CRC of
    /// every block in every pack (no key needed: a damaged block is named with
    /// the points that need it); with --read-data, also decrypt and verify
    /// every block of every point, and check the points against the vault's
    /// copy of the audit log: a point whose audit record was deleted, or a
    /// committed point the vault lost, is a problem (see `audit verify`).
    Check {
        /// VAULT: a directory, or lifeboat://HOST:PORT/VAULT for a vault server.
        #[arg(value_name = "VAULT", value_parser = crate::vault_open::location_parser())]
        dir: Location,
        /// Decrypt and verify every block (needs --key).
        #[arg(long, requires = "key")]
        read_data: bool,
        /// The customer key file.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// At the recovery site: serve vault directories to the protected hosts
    /// enrolled in the site (`lifeboat site enroll`), over HTTP/2 on TLS 1.3
    /// with mutual authentication. Runs in the foreground (for systemd);
    /// SIGTERM or SIGINT stops accepting, finishes the requests in flight and
    /// exits 0. Hosts reach a vault as lifeboat://HOST:PORT/NAME. The server
    /// never sees the customer key: it checks every object's name against
    /// its bytes before it becomes visible, lets a host write only its own
    /// disks' objects, and never lets a host delete or replace a point:
    /// prune and gc run here, by path. Example:
    /// `lifeboat vault serve prod=/srv/vaults/prod`.
    Serve(super::serve::Args),
}

pub fn run(home: &crate::home::Home, cmd: Command) -> Result<()> {
    match cmd {
        Command::Init { dir, key, immutable, cipher } => {
            let keys = keyfile::load(&key)?;
            if immutable.is_some() && !dir.is_cloud() {
                anyhow::bail!(
                    "--immutable is for a cloud vault (s3:// or az://), whose store can lock objects: {dir} is {}",
                    if dir.is_server() {
                        "a vault server, already append-only for protected hosts (only the site deletes)"
                    } else {
                        "a directory, which cannot keep its files from whoever may write it"
                    }
                );
            }
            let backend = crate::vault_open::CliOpener::new(home).create(&dir)?;
            if let Some(days) = immutable {
                let now = backend.protection()?;
                if !vault::immutability::holds(&now, days) {
                    anyhow::bail!(
                        "{dir} cannot be an immutable vault of {days} days: its store reports {now}. {}; nothing was \
                         created",
                        if matches!(dir, Location::S3 { .. }) {
                            format!(
                                "Use a bucket made with Object Lock and a default retention of at least {days} days \
                                 (aws s3api create-bucket --object-lock-enabled-for-bucket, then put-object-lock-\
                                 configuration with Mode COMPLIANCE and Days {days})"
                            )
                        } else {
                            "Use a container with a time-based immutability policy (set in the Azure portal or with \
                             az storage container immutability-policy create)"
                                .to_string()
                        }
                    );
                }
            }
            let cipher = cipher.unwrap_or_else(disk_format::Cipher::preferred);
            if cipher == disk_format::Cipher::Aes256Gcm && !disk_format::Cipher::aes_is_fast_here() {
                tracing::warn!(
                    "lifeboat: warning: this CPU has no AES instructions: this host seals aes-256-gcm blocks in \
                     software, several times slower than xchacha20-poly1305"
                );
            }
            let v = Vault::init_with_cipher(backend, &keys, cipher)?;
            if let Some(days) = immutable {
                v.promise_immutability(days)?;
            }
            outln!("vault created in {dir} (accepts key {}, cipher {cipher})", v.config().key_fingerprint);
            if let Some(days) = immutable {
                outln!("immutable: {}; kept at least {days} days", v.backend().protection()?);
            }
            let details = serde_json::json!({
                "location": v.backend().location(), "immutable_days": immutable, "cipher": cipher.name(),
            });
            super::audit::record(&super::audit::audit_dir(home), &keys, Some(&v), "vault.init", None, details)?;
            Ok(())
        }
        Command::Gc { dir, dry_run, wait } => {
            crate::vault_open::refuse_on_server(&dir, "vault gc")?;
            let wait = std::time::Duration::from_secs(wait.unwrap_or(0));
            let mut last = String::new();
            let mut waiting = |busy: &vault::VaultError| {
                if let vault::VaultError::Busy { lease, .. } = busy {
                    if *lease != last {
                        tracing::info!(
                            "lifeboat vault gc: waiting up to {}s for {lease} to end; collecting in the next gap",
                            wait.as_secs()
                        );
                        last.clone_from(lease);
                    }
                }
            };
            let r = open(home, &dir)?.gc_within(dry_run, wait, &mut waiting)?;
            let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
            outln!(
                "{}{} packs ({:.1} MiB) and {} pages ({:.1} MiB) no point uses; {} packs ({:.1} MiB) kept",
                if dry_run { "dry run: would delete " } else { "deleted " },
                r.packs_deleted.len(),
                mib(r.pack_bytes_deleted),
                r.pages_deleted.len(),
                mib(r.page_bytes_deleted),
                r.packs_kept,
                mib(r.pack_bytes_kept)
            );
            if !r.unfinished_removed.is_empty() {
                outln!(
                    "{}{} unfinished objects ({:.1} MiB) left by writers that died over a day ago",
                    if dry_run { "dry run: would delete " } else { "deleted " },
                    r.unfinished_removed.len(),
                    mib(r.unfinished_bytes())
                );
            }
            let (freed, freed_bytes) = r.trash_freed;
            let now = (r.packs_deleted.len() + r.pages_deleted.len()) as u64;
            if freed > now {
                let earlier = freed_bytes.saturating_sub(r.pack_bytes_deleted + r.page_bytes_deleted);
                outln!(
                    "freed {} objects ({:.1} MiB) an earlier collection left in the vault's trash",
                    freed - now,
                    mib(earlier)
                );
            }
            if !r.mostly_garbage.is_empty() {
                outln!("{} kept packs are mostly unused (repacking is not implemented yet)", r.mostly_garbage.len());
            }
            if !r.locked_kept.is_empty() {
                outln!(
                    "{} unused objects are kept by the store's lock or immutability policy; a later collection \
                     frees them once it ends",
                    r.locked_kept.len()
                );
            }
            if r.locks_extended > 0 {
                outln!(
                    "immutable vault: extended the locks of {} objects points use, which ended within half the \
                     vault's immutable days",
                    r.locks_extended
                );
            }
            Ok(())
        }
        Command::Serve(a) => super::serve::serve(home, a),
        Command::Check { dir, read_data, key } => {
            let v = open(home, &dir)?;
            let keys = match (&key, read_data) {
                (Some(k), true) => Some(keyfile::load(k)?),
                _ => None,
            };
            if let Some(k) = &keys {
                v.check_key(k)?;
            }
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let report = v.check(keys.as_ref(), &mut crate::progress::Reporter::counting("", tty))?;
            let (protection, below_promise) = v.protection_now()?;
            // With the key: the points and the audit copies vouch for each
            // other (issue 12, hole 8): lost roots or lost audit segments.
            let links = match &keys {
                Some(k) => Some(audit::check_links(&v, k)?),
                None => None,
            };
            if let Some(k) = &keys {
                // Reading every block is a use of the key: on record.
                let details = serde_json::json!({
                    "location": v.backend().location(), "points": report.roots,
                    "blocks_verified": report.blocks_verified, "problems": report.problems.len(),
                });
                super::audit::record(&super::audit::audit_dir(home), k, Some(&v), "vault.check", None, details)?;
            }
            outln!(
                "{} packs, {} pages, {} points checked{}",
                report.packs,
                report.pages,
                report.roots,
                if keys.is_some() {
                    format!(", {} blocks decrypted and verified", report.blocks_verified)
                } else {
                    String::new()
                }
            );
            if let Some(l) = &links {
                outln!(
                    "{} points checked against the audit log's copy ({} name its head); {} points the log names \
                     checked against the vault",
                    l.points,
                    l.heads,
                    l.commits
                );
            }
            outln!("cipher: {}", v.config().cipher);
            outln!("protection: {protection}");
            let link_problems = links.map(|l| l.problems).unwrap_or_default();
            for p in &link_problems {
                outln!("PROBLEM {p}");
            }
            if let Some(p) = &below_promise {
                outln!("PROBLEM config/{}: {p}", vault::immutability::PROMISE_NAME);
            }
            let others = link_problems.len() + usize::from(below_promise.is_some());
            if report.problems.is_empty() && others == 0 {
                outln!("no problems found");
                return Ok(());
            }
            for p in &report.problems {
                let mut at = p.object.clone();
                if let Some(point) = &p.point {
                    at = format!("{at} (point {point}");
                    at.push_str(&p.block.map(|b| format!(", block {b})")).unwrap_or_else(|| ")".into()));
                }
                outln!("PROBLEM {at}: {}", p.detail);
            }
            anyhow::bail!("{} problem(s) found in vault {dir}", report.problems.len() + others)
        }
    }
}

/// Parses `--cipher`.
fn parse_cipher(s: &str) -> Result<disk_format::Cipher, String> {
    disk_format::Cipher::from_name(s).ok_or_else(|| {
        let names: Vec<_> = disk_format::Cipher::ALL.iter().map(|c| c.name()).collect();
        format!("unknown cipher {s:?}: use one of {}", names.join(", "))
    })
}
