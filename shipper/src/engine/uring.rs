//! The io_uring engine: the pool registered as one fixed buffer, up to
//! `depth` reads in flight, the image read with O_DIRECT where it can be.
//!
//! The engine owns every in-flight read ([`Op`], with its [`BlockBuf`]) in
//! `ops`, indexed by the read's `user_data`, from the moment its submission
//! entry is queued until its completion is reaped: nothing else can touch a
//! buffer the kernel may be writing. A full engine refuses a push (the
//! caller reaps first); a short read is resubmitted for the rest of the
//! block; `EINTR`/`EAGAIN` are retried; a direct read refused with `EINVAL`
//! is retried, and every later read made, through the buffered descriptor.

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};

use super::buf::{Arena, ALIGN};
use super::{BlockPool, Done, Image, Op};
use crate::error::ShipError;

/// Retries of one read after `EINTR`/`EAGAIN` before it counts as failed.
const MAX_RETRIES: u32 = 1000;

/// A ring that was set up, before the image is opened.
pub(super) struct Setup {
    ring: IoUring,
    arena: Arc<Arena>,
    registered: bool,
    depth: usize,
}

/// io_uring reads into registered pool buffers.
pub struct UringEngine {
    // Field order matters: the ring is dropped (closed) before the last
    // `Arc` of the arena it may have registered, and `Drop` below has
    // drained it before either.
    ring: IoUring,
    arena: Arc<Arena>,
    registered: bool,
    image: Image,
    /// Direct reads work (cleared after an `EINVAL`).
    direct_ok: bool,
    /// Ask the page cache first (`Engine::set_cache_first`; cleared when
    /// the file refuses `RWF_NOWAIT`).
    cache_first: bool,
    /// Reads the page cache answered whole, and reads that went (at least
    /// partly) to the device.
    cache_hits: u64,
    cache_misses: u64,
    /// In-flight reads by `user_data`.
    ops: Vec<Option<Op>>,
    free: Vec<usize>,
    in_flight: usize,
    cqes: Vec<(u64, i32)>,
}

impl UringEngine {
    /// Sets up a ring for `depth` reads and registers `pool` with it. A pool
    /// the kernel will not pin (`RLIMIT_MEMLOCK`) is used unregistered.
    pub(super) fn setup(depth: usize, pool: &BlockPool) -> io::Result<Setup> {
        let depth = depth.clamp(1, 4096);
        let entries = u32::try_from(depth.next_power_of_two()).expect("at most 4096");
        let ring = IoUring::new(entries)?;
        let arena = Arc::clone(pool.arena());
        let (base, len) = arena.region();
        let iov = libc::iovec { iov_base: base.cast(), iov_len: len };
        // SAFETY: the iovec covers exactly the arena's allocation, which stays
        // allocated while this engine lives: the engine holds an `Arc` of it,
        // declared after the ring so the ring is closed (and the buffer
        // unregistered) first. The kernel writes to it only for the reads we
        // submit, each into a buffer the engine owns at the time.
        let registered = unsafe { ring.submitter().register_buffers(&[iov]) }.is_ok();
        Ok(Setup { ring, arena, registered, depth })
    }

    pub(super) fn direct(&self) -> bool {
        self.direct_ok && self.image.direct.is_some()
    }

    pub(super) fn set_cache_first(&mut self, on: bool) {
        self.cache_first = on;
    }

    pub(super) fn cache_stats(&self) -> (u64, u64) {
        (self.cache_hits, self.cache_misses)
    }

    pub(super) fn registered(&self) -> bool {
        self.registered
    }

    pub(super) fn capacity(&self) -> usize {
        self.ops.len()
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub(super) fn push(&mut self, op: Op) {
        let idx = self.free.pop().expect("Engine::push checks the capacity");
        self.ops[idx] = Some(op);
        self.in_flight += 1;
        self.queue(idx);
    }

    /// Queues a submission entry for the unread rest of read `idx`.
    fn queue(&mut self, idx: usize) {
        let direct_fd = self.image.direct.as_ref().filter(|_| self.direct_ok).map(AsRawFd::as_raw_fd);
        let buffered_fd = self.image.buffered.as_raw_fd();
        let registered = self.registered;
        let op = self.ops[idx].as_mut().expect("queued reads are in flight");
        let at = op.offset + op.got as u64;
        let rest = op.len - op.got;
        let room = op.buf.block_size() - op.got;
        // O_DIRECT needs the offset, the address and the length aligned: the
        // block's offset and data are; a short last block is read rounded up
        // (the buffer has room, and the read stops at the end of the file).
        let aligned = at.is_multiple_of(ALIGN as u64) && op.got.is_multiple_of(ALIGN);
        // The page cache is asked once per read, at its start; what it
        // lacks then comes from the device.
        op.nowait = self.cache_first && !op.cache_tried;
        op.cache_tried = true;
        let direct_fd = direct_fd.filter(|_| aligned && !op.nowait);
        op.direct = direct_fd.is_some();
        let (fd, want) = match direct_fd {
            Some(fd) => (fd, rest.next_multiple_of(ALIGN).min(room)),
            None => (buffered_fd, rest),
        };
        let want = u32::try_from(want).expect("a block is at most 1 MiB");
        let rw_flags = if op.nowait { libc::RWF_NOWAIT } else { 0 };
        // In bounds: got < len <= block_size.
        let ptr = op.buf.data_ptr().wrapping_add(op.got);
        let entry = if registered && op.buf.is_in(&self.arena) {
            opcode::ReadFixed::new(types::Fd(fd), ptr, want, 0).offset(at).rw_flags(rw_flags).build()
        } else {
            opcode::Read::new(types::Fd(fd), ptr, want).offset(at).rw_flags(rw_flags).build()
        };
        let entry = entry.user_data(idx as u64);
        // SAFETY: the entry's buffer, `want` bytes at `ptr`, lies in the data
        // area of `op.buf` (want <= room = block_size - got), a buffer the
        // engine owns in `ops[idx]` until this read's completion is reaped,
        // and whose arena outlives the ring (`Drop` drains the ring first, or
        // leaks the buffers). The descriptors belong to `self.image`, which is
        // never closed while the engine lives. For `ReadFixed`, the buffer is
        // inside the registered region (checked by `is_in`), buffer index 0.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        // At most one entry per read in flight is ever queued, and the queue
        // has at least `depth` entries.
        pushed.expect("the submission queue has room for every read in flight");
    }

    pub(super) fn reap(&mut self, wait: bool, out: &mut Vec<Done>) -> Result<(), ShipError> {
        let before = out.len();
        loop {
            let want = usize::from(wait && out.len() == before && self.in_flight > 0);
            match self.ring.submit_and_wait(want) {
                Ok(_) => {}
                // Interrupted, or short of kernel memory, or completions to
                // reap first: reap what there is and go round again.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => {}
                Err(e) => {
                    return Err(ShipError::Source(io::Error::new(
                        e.kind(),
                        format!("io_uring reading disk image {}: {e}", self.image.path.display()),
                    )))
                }
            }
            self.cqes.clear();
            self.cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            for i in 0..self.cqes.len() {
                let (user_data, res) = self.cqes[i];
                self.complete(user_data, res, out);
            }
            if !wait || out.len() > before || self.in_flight == 0 {
                break;
            }
        }
        // Resubmitted rests of short or retried reads start now, not at the
        // next call.
        if !self.ring.submission().is_empty() {
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => {}
                Err(e) => return Err(ShipError::Source(e)),
            }
        }
        Ok(())
    }

    fn complete(&mut self, user_data: u64, res: i32, out: &mut Vec<Done>) {
        let Some(idx) = usize::try_from(user_data).ok().filter(|&i| i < self.ops.len()) else { return };
        let Some(op) = self.ops[idx].as_mut() else { return };
        let result = if res < 0 {
            let errno = -res;
            match errno {
                // Not (all) in the page cache: from the device, then.
                libc::EAGAIN if op.nowait => {
                    return self.queue(idx);
                }
                // This file does not take RWF_NOWAIT: stop asking.
                libc::EOPNOTSUPP | libc::EINVAL if op.nowait => {
                    self.cache_first = false;
                    return self.queue(idx);
                }
                libc::EINTR | libc::EAGAIN if op.retries < MAX_RETRIES => {
                    op.retries += 1;
                    return self.queue(idx);
                }
                libc::EINVAL if op.direct => {
                    // The filesystem took O_DIRECT at open but not for this
                    // read: go through the page cache from now on.
                    self.direct_ok = false;
                    return self.queue(idx);
                }
                _ => Err(self.image.error(op.block, op.offset, &io::Error::from_raw_os_error(errno))),
            }
        } else if res == 0 {
            Err(self.image.short(op))
        } else {
            op.got += usize::try_from(res).expect("positive");
            if op.got < op.len {
                return self.queue(idx); // the rest from the device, if from the cache
            }
            if op.nowait {
                self.cache_hits += 1;
            } else {
                self.cache_misses += 1;
            }
            Ok(())
        };
        let op = self.ops[idx].take().expect("checked above");
        self.free.push(idx);
        self.in_flight -= 1;
        out.push(op.done(result));
    }
}

impl Setup {
    pub(super) fn with_image(self, image: Image) -> UringEngine {
        UringEngine {
            ring: self.ring,
            arena: self.arena,
            registered: self.registered,
            image,
            direct_ok: true,
            cache_first: false,
            cache_hits: 0,
            cache_misses: 0,
            ops: (0..self.depth).map(|_| None).collect(),
            free: (0..self.depth).rev().collect(),
            in_flight: 0,
            cqes: Vec::with_capacity(self.depth),
        }
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        // The kernel may still be writing to the buffers of reads in flight:
        // wait for every one of them before the buffers can be reused or freed.
        let mut failures = 0;
        while self.in_flight > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => {}
                Err(_) => failures += 1,
            }
            if failures > 100 {
                // Cannot drain the ring: leak the buffers (and with them the
                // arena) rather than free memory the kernel may still write.
                for op in self.ops.iter_mut().filter_map(Option::take) {
                    std::mem::forget(op.buf);
                }
                return;
            }
            for c in self.ring.completion() {
                if let Some(slot) = usize::try_from(c.user_data()).ok().and_then(|i| self.ops.get_mut(i)) {
                    if slot.take().is_some() {
                        self.in_flight -= 1;
                    }
                }
            }
        }
    }
}
