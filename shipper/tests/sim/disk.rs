//! The fake disk: the filter's contract for one protected disk, in memory.
//!
//! It models exactly what `filter::Disk` promises the shipper (see
//! filter/src/disk.rs and docs/DESIGN-NOTES.md):
//! - a live dirty set, which every VM write adds its block to;
//! - a cut (`Dirty` or `Full`) moves the live bits into the cut set; the
//!   reader may read the cut set (`Dirty`) or every block (`Full`), each block
//!   once, as it was at the cut: a VM write to a block not yet read copies
//!   the old contents first (copy-before-write);
//! - `finish` drops the cut set, `abort` merges it back into the live set;
//! - a filter process crash merges an unfinished cut back into the live set
//!   (what a restarted filter does with the cut bitmap);
//! - a host crash makes the state suspect: every block is dirty until a full
//!   cut is finished with `verified`.
//!
//! Block contents are pattern numbers (0 = all zero), turned into bytes by
//! [`super::rng::fill_block`], so a copy of the whole disk is a few hundred
//! bytes. Anything the shipper does that the real filter would refuse is
//! recorded in `violations` (and refused the same way).

use std::collections::HashMap;

use disk_format::{Geometry, LastPoint};
use filter::{CutInfo, CutKind};

/// A cut in progress.
#[derive(Debug, Clone)]
pub struct Cut {
    pub kind: CutKind,
    pub generation: u64,
    /// The live bits the cut took.
    pub set: Vec<bool>,
    /// Blocks the reader may still read.
    pub preserve: Vec<bool>,
    /// Copy-before-write copies: block -> contents at the cut.
    pub copies: HashMap<u64, u32>,
}

/// The filter and its disk image.
#[derive(Debug, Clone)]
pub struct SimDisk {
    pub geometry: Geometry,
    /// Contents of each block now (pattern numbers).
    pub data: Vec<u32>,
    /// The live dirty map.
    pub live: Vec<bool>,
    pub cut: Option<Cut>,
    pub suspect: bool,
    pub generation: u64,
    /// The point the dirty maps are relative to (the state file's record).
    pub last_point: Option<LastPoint>,
    /// Contract violations by the shipper.
    pub violations: Vec<String>,
}

impl SimDisk {
    pub fn new(geometry: Geometry) -> SimDisk {
        let n = usize::try_from(geometry.block_count).expect("small disk");
        SimDisk {
            geometry,
            data: vec![0; n],
            live: vec![false; n],
            cut: None,
            suspect: false,
            generation: 0,
            last_point: None,
            violations: Vec::new(),
        }
    }

    pub fn blocks(&self) -> u64 {
        self.geometry.block_count
    }

    /// A VM write of the whole block `b`.
    pub fn write(&mut self, b: u64, pattern: u32) {
        let i = ix(b);
        if let Some(cut) = &mut self.cut {
            if cut.preserve[i] {
                cut.copies.entry(b).or_insert(self.data[i]);
            }
        }
        self.data[i] = pattern;
        self.live[i] = true;
    }

    pub fn cut(&mut self, kind: CutKind) -> Result<CutInfo, String> {
        if let Some(c) = &self.cut {
            let msg = format!("cut while cut {} is in progress", c.generation);
            self.violations.push(msg.clone());
            return Err(msg);
        }
        let set = std::mem::replace(&mut self.live, vec![false; self.data.len()]);
        let dirty = set.iter().filter(|&&b| b).count() as u64;
        let preserve = match kind {
            CutKind::Dirty => set.clone(),
            CutKind::Full => vec![true; self.data.len()],
        };
        let readable = preserve.iter().filter(|&&b| b).count() as u64;
        self.generation += 1;
        self.cut = Some(Cut { kind, generation: self.generation, set, preserve, copies: HashMap::new() });
        Ok(CutInfo { generation: self.generation, dirty_blocks: dirty, readable_blocks: readable })
    }

    pub fn cut_blocks(&mut self) -> Result<Vec<u64>, String> {
        match &self.cut {
            None => Err(self.violation("blocks() with no cut in progress")),
            Some(c) => Ok((0u64..).zip(&c.set).filter(|(_, &s)| s).map(|(b, _)| b).collect()),
        }
    }

    /// Reads block `b` as at the cut, releasing it.
    pub fn read_block(&mut self, b: u64) -> Result<u32, String> {
        if b >= self.blocks() {
            return Err(self.violation(&format!("read of block {b} past the end")));
        }
        let i = ix(b);
        let Some(cut) = &mut self.cut else { return Err(self.violation(&format!("read of block {b} with no cut"))) };
        if let Some(v) = cut.copies.remove(&b) {
            cut.preserve[i] = false;
            return Ok(v);
        }
        if cut.preserve[i] {
            cut.preserve[i] = false;
            return Ok(self.data[i]);
        }
        Err(self.violation(&format!("read of block {b}, which is not in the cut or was read already")))
    }

    pub fn finish(&mut self, point: &LastPoint, verified: bool) -> Result<(), String> {
        let Some(cut) = self.cut.take() else { return Err(self.violation("finish with no cut in progress")) };
        if point.cut_generation != cut.generation {
            self.cut = Some(cut);
            return Err(self.violation("finish naming a point of another cut"));
        }
        self.last_point = Some(*point);
        let unread: Vec<u64> =
            (0u64..).zip(cut.set.iter().zip(&cut.preserve)).filter(|(_, (s, p))| **s && **p).map(|(b, _)| b).collect();
        if !unread.is_empty() {
            self.violations.push(format!("finish of a cut whose blocks {unread:?} were never read"));
        }
        if verified {
            if cut.kind != CutKind::Full || cut.preserve.iter().any(|&p| p) {
                self.violations.push("finish(verified) of a cut that did not read every block".into());
            }
            self.suspect = false;
        }
        Ok(())
    }

    pub fn abort(&mut self) -> Result<(), String> {
        let Some(cut) = self.cut.take() else { return Err(self.violation("abort with no cut in progress")) };
        merge(&mut self.live, &cut.set);
        Ok(())
    }

    /// The filter process died and was restarted: an unfinished cut's bits
    /// are back in the live map, its copies are gone.
    pub fn filter_crash(&mut self) {
        if let Some(cut) = self.cut.take() {
            merge(&mut self.live, &cut.set);
        }
    }

    /// The host went down: bitmap pages that were never written back are
    /// lost (`lose` says which bits), so the restarted filter cannot trust
    /// the bitmaps: every block is dirty and the state is suspect until a
    /// verified full cut.
    pub fn host_crash(&mut self, lose: &mut dyn FnMut() -> bool) {
        self.filter_crash();
        for bit in &mut self.live {
            if *bit && lose() {
                *bit = false;
            }
        }
        self.suspect = true;
        self.live.fill(true);
    }

    /// Blocks dirty in the live map or in an unfinished cut.
    pub fn dirty(&self, b: u64) -> bool {
        let i = ix(b);
        self.live[i] || self.cut.as_ref().is_some_and(|c| c.set[i])
    }

    fn violation(&mut self, what: &str) -> String {
        self.violations.push(what.to_string());
        what.to_string()
    }
}

fn merge(into: &mut [bool], from: &[bool]) {
    for (a, b) in into.iter_mut().zip(from) {
        *a |= *b;
    }
}

fn ix(b: u64) -> usize {
    usize::try_from(b).expect("small disk")
}
