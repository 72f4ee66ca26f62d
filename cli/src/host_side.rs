//! This host's half of failback and of a planned failover's source side
//! ([`recovery::HostSide`]): its home, protecting a disk, a replication
//! cycle, its audit log. The orchestration itself is in `recovery`.

use std::path::Path;

use anyhow::Context;
use disk_format::keys::Keys;
use recovery::{HostError, HostSide, LocalDisk, ProtectRequest, Shipped, VmDefinition};
use vault::Vault;

use crate::home::Home;
use crate::protecting::{Replicate, Request};

/// The host whose home is `home`.
pub struct Host<'a> {
    home: &'a Home,
    /// `--bandwidth`: every vault this host opens, and every cycle it runs,
    /// share this link's limit.
    throttle: Option<vault::throttle::Throttle>,
}

impl<'a> Host<'a> {
    pub fn new(home: &'a Home) -> Host<'a> {
        Host { home, throttle: None }
    }

    /// This host with its vault traffic limited (`--bandwidth`).
    pub fn limited(home: &'a Home, throttle: Option<vault::throttle::Throttle>) -> Host<'a> {
        Host { home, throttle }
    }
}

/// The binary's errors keep their whole chain through the library.
fn host<T>(r: anyhow::Result<T>) -> Result<T, HostError> {
    r.map_err(Into::into)
}

impl HostSide for Host<'_> {
    /// The disk's state file, locked.
    type Lock = std::fs::File;

    fn home(&self) -> &Path {
        self.home.root()
    }

    fn say(&self, line: &str) {
        tracing::info!("{line}");
    }

    fn progress(&self, prefix: &str) -> Box<dyn vault::Progress> {
        Box::new(crate::progress::Reporter::counting(prefix, std::io::IsTerminal::is_terminal(&std::io::stderr())))
    }

    fn vm(&self, name: &str) -> Result<Option<VmDefinition>, HostError> {
        host(self.home.vms()).map(|vms| vms.into_iter().find(|d| d.name == name))
    }

    fn disk(&self, name: &str) -> Result<LocalDisk, HostError> {
        let e = host(self.home.disk(name))?;
        Ok(LocalDisk { image: e.config.image.clone(), failback_marker: e.failback_marker() })
    }

    fn disk_identity(&self, name: &str) -> Result<[u8; 16], HostError> {
        host(self.home.disk(name).and_then(|e| e.disk_id()))
    }

    fn disk_vault(&self, name: &str) -> Result<(Keys, Vault), HostError> {
        let entry = host(self.home.disk(name))?;
        let r = host(entry.replication(name))?;
        self.open_vault(&r.vault, &r.key)
    }

    fn open_vault(&self, vault: &vault::Location, key: &Path) -> Result<(Keys, Vault), HostError> {
        host((|| {
            let keys = crate::keyfile::load(key)?;
            let vault = crate::vault_open::open_limited(self.home, vault, self.throttle.as_ref())?;
            vault.check_key(&keys)?;
            Ok((keys, vault))
        })())
    }

    fn lock_state(&self, name: &str) -> Result<Option<std::fs::File>, HostError> {
        let entry = host(self.home.disk(name))?;
        let path = entry.state_path();
        let state = host(std::fs::File::open(&path).with_context(|| format!("opening {}", path.display())))?;
        Ok(crate::protecting::lock_state(&state).then_some(state))
    }

    fn protect(&self, req: &ProtectRequest<'_>) -> Result<(), HostError> {
        let mut r = Request::new(req.disk, req.image);
        r.replicate = req.replicate_to.map(|(vault, key)| Replicate::new(vault.clone(), key));
        r.reset_state = req.reset_state;
        // Another command's report: on stderr, its stdout is its own.
        host(crate::protecting::protect(self.home, &r, &mut std::io::stderr()))
    }

    fn run_cycle(&self, name: &str) -> Result<Shipped, HostError> {
        let bar = crate::cmd::ship::Bar::new("", false).quiet_when_done();
        let r = host(crate::cmd::ship::once(self.home, name, bar, self.throttle.clone()))?;
        Ok(Shipped {
            sequence: r.sequence,
            blocks_read: r.blocks_read,
            new_blocks: r.new_blocks,
            bytes_shipped: r.bytes_shipped,
        })
    }

    fn audit(
        &self,
        keys: &Keys,
        vault: &Vault,
        kind: &str,
        disk: Option<&str>,
        details: serde_json::Value,
    ) -> Result<(), HostError> {
        let dir = crate::cmd::audit::audit_dir(self.home);
        host(crate::cmd::audit::record(&dir, keys, Some(vault), kind, disk, details))
    }
}
