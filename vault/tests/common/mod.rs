//! A small vault built with disk-format's own writers, the way the shipper
//! builds one: blocks sealed into packs (dedup against the block index and
//! the pack being filled), map pages from the previous point's, root last.
#![allow(dead_code, clippy::cast_possible_truncation)] // each test file uses part of this

use disk_format::pack::PackWriter;
use disk_format::{BlockId, Consistency, Geometry, Keys, MapBuilder, MasterKey, PageError, PageId, Root, RootId};
use vault::{BlockIndex, HostIdentity, LocalBackend, Vault, VaultError};

/// The test key.
pub fn master() -> MasterKey {
    MasterKey::from_bytes([0x42; 32])
}

/// Another key.
pub fn other_master() -> MasterKey {
    MasterKey::from_bytes([0x17; 32])
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A protected disk being shipped into a vault: its current contents and
/// the last point shipped.
pub struct Disk {
    pub name: String,
    pub geometry: Geometry,
    pub image: Vec<u8>,
    pub previous: Option<(Vec<PageId>, RootId)>,
    pub sequence: u64,
    /// Blobs per pack (small, so a point spans several packs).
    pub pack_blobs: usize,
    /// Cut time of point 0; point `n` is cut at `cut_base_ns + n * cut_interval_ns`.
    pub cut_base_ns: u64,
    /// Time between two points' cuts.
    pub cut_interval_ns: u64,
    /// The disk's identity.
    pub disk_id: [u8; 16],
    /// Its host, sealed in format-2 roots.
    pub host: String,
    /// The root format it ships: 1 (under its name, as Lifeboat wrote
    /// before 2026-12-04: most of these tests exercise the chain mechanics,
    /// which are the same for both) or 2 (under its namespace).
    pub format: u16,
}

impl Disk {
    pub fn new(name: &str, disk_size: u64, block_size: u64, pack_blobs: usize) -> Disk {
        let geometry = Geometry::new(disk_size, block_size).unwrap();
        Disk {
            name: name.to_string(),
            geometry,
            image: vec![0; disk_size as usize],
            previous: None,
            sequence: 0,
            pack_blobs,
            cut_base_ns: 1_790_000_000_000_000_000,
            cut_interval_ns: 30_000_000_000,
            disk_id: *b"test-disk-id-001",
            host: "test-host".into(),
            format: 1,
        }
    }

    /// The chain its roots are stored under.
    pub fn chain(&self, keys: &Keys) -> String {
        if self.format == 1 {
            self.name.clone()
        } else {
            Vault::chain_of(keys, &self.disk_id)
        }
    }

    pub fn block(&self, block: u64) -> &[u8] {
        let r = self.geometry.block_range(block);
        &self.image[r.start as usize..r.end as usize]
    }

    pub fn block_mut(&mut self, block: u64) -> &mut [u8] {
        let r = self.geometry.block_range(block);
        &mut self.image[r.start as usize..r.end as usize]
    }

    /// Ships the blocks in `changed` as the next point; returns its sequence.
    pub fn ship(&mut self, vault: &Vault, keys: &Keys, index: &mut BlockIndex, changed: &[u64]) -> u64 {
        let mut map = match &self.previous {
            None => MapBuilder::new(self.geometry),
            Some((pages, _)) => MapBuilder::from_previous(pages, self.geometry).unwrap(),
        };
        let mut writer: Option<PackWriter<Vec<u8>>> = None;
        let mut shipped = 0u64;
        let flush = |w: PackWriter<Vec<u8>>, index: &mut BlockIndex, shipped: &mut u64| {
            let done = w.finish().unwrap();
            vault.put_pack(&done.id, &done.out).unwrap();
            index.add_pack(&done.id, &done.index);
            *shipped += done.len;
        };
        for &b in changed {
            let data = self.block(b).to_vec();
            if data.iter().all(|&x| x == 0) {
                map.set(b, BlockId::ZERO).unwrap();
                continue;
            }
            let id = keys.block_id(&data);
            map.set(b, id).unwrap();
            if index.contains(&id) || writer.as_ref().is_some_and(|w| w.contains(&id)) {
                continue;
            }
            let w = writer.get_or_insert_with(|| PackWriter::new(Vec::new()).unwrap());
            w.add_blob(&id, &keys.seal_block(disk_format::Cipher::XChaCha20Poly1305, &id, &data).unwrap()).unwrap();
            if w.count() >= self.pack_blobs {
                flush(writer.take().unwrap(), index, &mut shipped);
            }
        }
        if let Some(w) = writer.take() {
            flush(w, index, &mut shipped);
        }
        let built = map.finish(|id| vault.get_page(id).map_err(PageErrorOrVault::Vault)).unwrap();
        for (id, bytes) in &built.new_pages {
            vault.put_page(id, bytes).unwrap();
            shipped += bytes.len() as u64;
        }
        self.sequence += 1;
        let root = Root {
            consistency: if self.sequence.is_multiple_of(2) { Consistency::App } else { Consistency::Crash },
            disk_id: self.disk_id,
            disk_name: self.name.clone(),
            host: self.host.clone(),
            namespace: None,
            sequence: self.sequence,
            cut_time_ns: self.cut_base_ns + self.sequence * self.cut_interval_ns,
            cut_generation: self.sequence,
            geometry: self.geometry,
            bytes_shipped: shipped,
            parent: self.previous.as_ref().map(|(_, r)| *r),
            pages: built.pages.clone(),
            page_packs: Vec::new(),
            page_pack_of: Vec::new(),
            extension: Vec::new(),
        };
        let bytes = if self.format == 1 { root.encode_version_1_for_tests(keys) } else { root.encode(keys) }.unwrap();
        vault.put_root(&self.chain(keys), self.sequence, &bytes).unwrap();
        self.previous = Some((built.pages, RootId::of(&bytes)));
        self.sequence
    }
}

/// `MapBuilder::finish` wants an error type that a `PageError` converts into.
#[derive(Debug)]
pub enum PageErrorOrVault {
    Page(PageError),
    Vault(VaultError),
}

impl From<PageError> for PageErrorOrVault {
    fn from(e: PageError) -> Self {
        PageErrorOrVault::Page(e)
    }
}

/// A new vault in `dir/vault` for the test key.
pub fn new_vault(dir: &std::path::Path) -> Vault {
    let backend = LocalBackend::create(&dir.join("vault")).unwrap();
    Vault::init(Box::new(backend), &master().keys()).unwrap().with_host_identity(test_host())
}

/// This process on a host of the tests' own making, so that leases are
/// judged the same on every machine (one without `/etc/machine-id` too).
pub fn test_host() -> HostIdentity {
    HostIdentity {
        host: "here".into(),
        machine: Some("test-machine-0123456789abcdef".into()),
        boot: Some("test-boot-1".into()),
        ..HostIdentity::current()
    }
}

/// The body of a lease that process `pid` (started at `start`) of `host` wrote.
pub fn lease_body(holder: &str, host: &HostIdentity, pid: u32, start: u64) -> String {
    format!(
        "lifeboat lease v1\nholder={holder}\nhost={}\nmachine={}\nboot={}\npid={pid}\nstart={start}\ncreated_ns=0\n",
        host.host,
        host.machine.as_deref().unwrap(),
        host.boot.as_deref().unwrap()
    )
}

/// Restores point `seq` of `disk` into a file under `dir`; returns its bytes.
pub fn restore_bytes(vault: &Vault, dir: &std::path::Path, disk: &str, seq: u64) -> Result<Vec<u8>, VaultError> {
    let path = dir.join(format!("restored-{disk}-{seq}.img"));
    let out = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    vault.restore(disk, seq, &master().keys(), &out, &mut ())?;
    Ok(std::fs::read(&path).unwrap())
}

/// Names and total size of every object of `kind` in the vault.
pub fn objects(vault: &Vault, kind: vault::Kind) -> (std::collections::BTreeSet<String>, u64) {
    let names: std::collections::BTreeSet<String> = vault.backend().list(kind, "").unwrap().into_iter().collect();
    let size = names.iter().map(|n| vault.backend().size(kind, n).unwrap().unwrap()).sum();
    (names, size)
}
