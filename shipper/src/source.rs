//! Where a cycle gets its cut: the running filter, or the image directly.
//!
//! A [`LocalSource`] also offers its cut for *direct* reads ([`CutSource::direct`]):
//! the pipeline reads the cut blocks straight from the image with its read
//! engine (io_uring, O_DIRECT, into the pool's buffers) and then asks the
//! disk, per block, whether a writer got there first
//! ([`Disk::validate_direct_read`], which argues why that is safe); if one
//! did, the block's copy is read instead. A [`RemoteSource`] has no direct
//! path: its blocks come over the control socket.

use std::io;
use std::sync::Arc;

use disk_format::{Geometry, LastPoint};
use filter::control::ControlClient;
use filter::disk::DiskPaths;
use filter::{CutInfo, CutKind, Disk};

use crate::error::ShipError;

/// A cut whose blocks can be read straight from the image, in this process.
#[derive(Clone, Copy)]
pub struct DirectCut<'a> {
    /// The disk, for [`Disk::reopen_image`], [`Disk::validate_direct_read`]
    /// and the fallback [`Disk::read_cut_block`].
    pub disk: &'a Disk,
    /// The cut's generation.
    pub generation: u64,
}

/// A disk that can be cut and read as at the cut.
pub trait CutSource {
    /// Disk size and block size.
    fn geometry(&self) -> Geometry;
    /// The state is suspect: every block must be verified.
    fn suspect(&mut self) -> Result<bool, ShipError>;
    /// The point the dirty maps are relative to: the last one a cycle
    /// committed from this disk's state (`None`: none recorded).
    fn last_point(&mut self) -> Result<Option<LastPoint>, ShipError>;
    /// Cuts the disk.
    fn cut(&mut self, kind: CutKind) -> Result<CutInfo, ShipError>;
    /// The cut's dirty blocks, ascending.
    fn blocks(&mut self) -> Result<Vec<u64>, ShipError>;
    /// Appends blocks `first..first + count` as at the cut to `out` (each
    /// block once: reading releases it).
    fn read(&mut self, first: u64, count: u64, out: &mut Vec<u8>) -> Result<(), ShipError>;
    /// Ends the cut after `point` was committed from it: records the point
    /// as the one the dirty maps are now relative to, then drops the cut's
    /// bits; `verified` clears a suspect state.
    fn finish(&mut self, point: &LastPoint, verified: bool) -> Result<(), ShipError>;
    /// Ends the cut without a point: its blocks stay dirty.
    fn abort(&mut self) -> Result<(), ShipError>;
    /// The cut in progress, if its blocks can be read straight from the
    /// image instead of with [`CutSource::read`] (a disk open in this
    /// process). Default: no.
    fn direct(&self) -> Option<DirectCut<'_>> {
        None
    }
}

/// The filter serving the disk, over its control socket.
pub struct RemoteSource {
    client: ControlClient,
    geometry: Geometry,
    /// How long a cut waits for another one in progress (the agent's own
    /// cycle) to end; zero: fail at once.
    wait_for_cut: std::time::Duration,
}

impl RemoteSource {
    /// Wraps a connected control client.
    pub fn new(mut client: ControlClient) -> Result<RemoteSource, ShipError> {
        let info = client.info().map_err(ShipError::Source)?;
        let geometry = Geometry::new(info.disk_size, u64::from(info.block_size))
            .map_err(|e| ShipError::Source(io::Error::other(e.to_string())))?;
        Ok(RemoteSource { client, geometry, wait_for_cut: std::time::Duration::ZERO })
    }

    /// Lets a cut wait up to `limit` for a cut already in progress (the
    /// cycle of the agent serving the disk) to end, instead of failing.
    pub fn waiting_for_cuts(self, limit: std::time::Duration) -> RemoteSource {
        RemoteSource { wait_for_cut: limit, ..self }
    }
}

impl CutSource for RemoteSource {
    fn geometry(&self) -> Geometry {
        self.geometry
    }
    fn suspect(&mut self) -> Result<bool, ShipError> {
        Ok(self.client.info().map_err(ShipError::Source)?.suspect)
    }
    fn cut(&mut self, kind: CutKind) -> Result<CutInfo, ShipError> {
        match self.client.cut(kind) {
            Err(e) if !self.wait_for_cut.is_zero() && e.to_string().contains("already in progress") => {
                tracing::info!(
                    "lifeboat: the process serving the disk is in a cycle of its own; waiting up to {} s for it \
                     to end",
                    self.wait_for_cut.as_secs()
                );
                self.client.cut_when_free(kind, self.wait_for_cut).map_err(ShipError::Source)
            }
            r => r.map_err(ShipError::Source),
        }
    }
    fn blocks(&mut self) -> Result<Vec<u64>, ShipError> {
        self.client.blocks().map_err(ShipError::Source)
    }
    fn read(&mut self, first: u64, count: u64, out: &mut Vec<u8>) -> Result<(), ShipError> {
        self.client.read(first, count, out).map_err(ShipError::Source)
    }
    fn last_point(&mut self) -> Result<Option<LastPoint>, ShipError> {
        Ok(self.client.info().map_err(ShipError::Source)?.last_point)
    }
    fn finish(&mut self, point: &LastPoint, verified: bool) -> Result<(), ShipError> {
        self.client.finish(point, verified).map(drop).map_err(ShipError::Source)
    }
    fn abort(&mut self) -> Result<(), ShipError> {
        self.client.abort().map(drop).map_err(ShipError::Source)
    }
}

/// A disk open in this process: the image itself with no filter running (the
/// disk is opened and locked, so no filter can start meanwhile), or the disk
/// the agent serves over NBD in the same process.
pub struct LocalSource {
    disk: Arc<Disk>,
    /// Generation of the cut this source made, while it is in progress.
    generation: Option<u64>,
}

impl LocalSource {
    /// Opens and locks the disk.
    pub fn open(paths: DiskPaths) -> Result<LocalSource, ShipError> {
        Ok(LocalSource { disk: Arc::new(Disk::open(paths)?), generation: None })
    }

    /// Cuts a disk this process already has open (and may be serving).
    pub fn shared(disk: Arc<Disk>) -> LocalSource {
        LocalSource { disk, generation: None }
    }

    fn disk(&self) -> &Disk {
        &self.disk
    }

    /// Closes the disk cleanly (marks the state file clean) if this source
    /// is its only user; otherwise just lets go of it.
    pub fn close(self) -> Result<(), ShipError> {
        match Arc::try_unwrap(self.disk) {
            Ok(disk) => Ok(disk.close()?),
            Err(_) => Ok(()),
        }
    }
}

impl CutSource for LocalSource {
    fn geometry(&self) -> Geometry {
        self.disk().geometry()
    }
    fn suspect(&mut self) -> Result<bool, ShipError> {
        Ok(self.disk().state().header().flags.suspect)
    }
    fn cut(&mut self, kind: CutKind) -> Result<CutInfo, ShipError> {
        let info = self.disk().cut(kind)?;
        self.generation = Some(info.generation);
        Ok(info)
    }
    fn blocks(&mut self) -> Result<Vec<u64>, ShipError> {
        Ok(self.disk().cut_blocks()?)
    }
    fn read(&mut self, first: u64, count: u64, out: &mut Vec<u8>) -> Result<(), ShipError> {
        let g = self.geometry();
        for b in first..first + count {
            let at = out.len();
            out.resize(at + g.block_len(b), 0);
            self.disk().read_cut_block(b, &mut out[at..])?;
        }
        Ok(())
    }
    fn last_point(&mut self) -> Result<Option<LastPoint>, ShipError> {
        Ok(self.disk().state().header().last_point)
    }
    fn finish(&mut self, point: &LastPoint, verified: bool) -> Result<(), ShipError> {
        self.generation = None;
        self.disk().finish_cut(*point, verified)?;
        Ok(())
    }
    fn abort(&mut self) -> Result<(), ShipError> {
        self.generation = None;
        self.disk().abort_cut()?;
        Ok(())
    }
    fn direct(&self) -> Option<DirectCut<'_>> {
        Some(DirectCut { disk: self.disk(), generation: self.generation? })
    }
}
