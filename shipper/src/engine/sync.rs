//! The fallback engine: `pread` into the pool's buffers, one read at a time.

use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::FileExt;

use super::{Done, Image, Op};

/// pread on a buffered descriptor.
pub struct SyncEngine {
    image: Image,
    queue: VecDeque<Op>,
}

impl SyncEngine {
    pub(super) fn new(image: Image) -> SyncEngine {
        SyncEngine { image, queue: VecDeque::new() }
    }

    pub(super) fn capacity(&self) -> usize {
        1
    }

    pub(super) fn in_flight(&self) -> usize {
        self.queue.len()
    }

    pub(super) fn push(&mut self, op: Op) {
        self.queue.push_back(op);
    }

    pub(super) fn reap(&mut self, out: &mut Vec<Done>) {
        while let Some(mut op) = self.queue.pop_front() {
            let result = self.read(&mut op);
            out.push(op.done(result));
        }
    }

    fn read(&self, op: &mut Op) -> Result<(), crate::ShipError> {
        let mut again = 0;
        while op.got < op.len {
            let at = op.offset + op.got as u64;
            match self.image.buffered.read_at(&mut op.buf.data_mut()[op.got..op.len], at) {
                Ok(0) => return Err(self.image.short(op)),
                Ok(n) => op.got += n,
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) && again < 100 => {
                    again += 1;
                }
                Err(e) => return Err(self.image.error(op.block, op.offset, &e)),
            }
        }
        Ok(())
    }
}
