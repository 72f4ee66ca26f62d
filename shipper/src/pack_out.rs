//! A pack's bytes on their way to the vault, without a pack-sized buffer.
//!
//! The cycle's writer thread builds a pack with a [`PackWriter`] over a
//! [`ChunkOut`]: every blob is copied once, while it is still in cache, into
//! a 4096-aligned chunk of [`CHUNK`] bytes (its CRC for the index was
//! computed by the worker that sealed it; the pack id hashes only the index
//! and trailer). Full
//! chunks go to the storer thread, which streams them into the vault's
//! [`ObjectWriter`](vault::ObjectWriter) (the local directory writes them with
//! O_DIRECT: from this buffer to the device, no page-cache copy) and hands
//! them back. [`CHUNKS`] chunks circulate, so the storer writes one while the
//! writer fills the next. The last chunk travels with the pack's id, and the
//! storer commits the object under it.
//!
//! The previous design filled a 32 MiB `Vec` per pack and `put` it whole:
//! one more copy of every byte, made after the blob had left the cache, and a
//! page-cache copy on top. `cargo bench -p benches --bench pipeline` shows the
//! difference (README, "The pipeline against the crypto floor").
//!
//! [`PackWriter`]: disk_format::pack::PackWriter

use std::io;

use crossbeam_channel::{Receiver, Sender};
use disk_format::pack::FinishedPack;
use vault::DIRECT_ALIGN;

/// Bytes in a chunk: a multiple of [`DIRECT_ALIGN`].
pub const CHUNK: usize = 4 << 20;
/// Chunks that circulate between the writer and the storer.
pub const CHUNKS: usize = 4;
const _: () = assert!(CHUNK.is_multiple_of(DIRECT_ALIGN) && CHUNKS >= 2);

/// A 4096-aligned buffer of [`CHUNK`] bytes and how much of it is filled.
pub(crate) struct Chunk {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Chunk {
    pub(crate) fn new() -> Chunk {
        // Zeroed by the allocator (calloc): pages are touched on first use.
        let buf = vec![0u8; CHUNK + DIRECT_ALIGN];
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        assert!(start < DIRECT_ALIGN, "a u8 buffer can be aligned within one page");
        Chunk { buf, start, len: 0 }
    }

    /// The filled part (aligned; a multiple of [`DIRECT_ALIGN`] when full).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// Empty again, for reuse.
    pub(crate) fn cleared(mut self) -> Chunk {
        self.len = 0;
        self
    }
}

/// What the writer sends the storer.
pub(crate) enum ToStorer {
    /// The next full chunk of the pack being written.
    Piece(Chunk),
    /// The finished pack: its id, length and index, and its last chunk
    /// (index and trailer at least) as `out`.
    End(FinishedPack<Chunk>),
}

/// The output a `PackWriter` fills: chunks from `free`, full ones sent to
/// the storer on `to`. When the storer has stopped (it failed), writes fail
/// with "the pack storer stopped"; the storer's own error is the cause.
pub(crate) struct ChunkOut<'a> {
    cur: Chunk,
    free: &'a Receiver<Chunk>,
    to: &'a Sender<ToStorer>,
}

fn storer_stopped() -> io::Error {
    io::Error::other("the pack storer stopped")
}

impl<'a> ChunkOut<'a> {
    /// Takes a free chunk (waits for the storer to hand one back).
    pub(crate) fn new(free: &'a Receiver<Chunk>, to: &'a Sender<ToStorer>) -> io::Result<ChunkOut<'a>> {
        let cur = free.recv().map_err(|_| storer_stopped())?;
        Ok(ChunkOut { cur, free, to })
    }

    /// Sends a finished pack's last chunk with its id, length and index.
    pub(crate) fn end(pack: FinishedPack<ChunkOut<'_>>) -> io::Result<()> {
        let FinishedPack { id, len, index, out } = pack;
        out.to.send(ToStorer::End(FinishedPack { id, len, index, out: out.cur })).map_err(|_| storer_stopped())
    }
}

impl io::Write for ChunkOut<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.cur.len == CHUNK {
            let next = self.free.recv().map_err(|_| storer_stopped())?;
            let full = std::mem::replace(&mut self.cur, next);
            self.to.send(ToStorer::Piece(full)).map_err(|_| storer_stopped())?;
        }
        let n = data.len().min(CHUNK - self.cur.len);
        let at = self.cur.start + self.cur.len;
        self.cur.buf[at..at + n].copy_from_slice(&data[..n]);
        self.cur.len += n;
        Ok(n)
    }

    /// Nothing to do: a partial chunk leaves only as the pack's last.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use crossbeam_channel::bounded;

    use super::*;
    use disk_format::ids::PackId;
    use disk_format::pack::PackIndex;

    fn some_index() -> PackIndex {
        let mut w = disk_format::pack::PackWriter::new(Vec::new()).unwrap();
        w.add_blob(&disk_format::ids::BlockId([1; 32]), &[0u8; 41]).unwrap();
        w.finish().unwrap().index
    }

    #[test]
    fn chunks_are_aligned_full_and_in_order() {
        let (free_tx, free_rx) = bounded(CHUNKS);
        for _ in 0..CHUNKS {
            free_tx.send(Chunk::new()).unwrap();
        }
        let (to_tx, to_rx) = bounded(CHUNKS * 4);
        let data: Vec<u8> = (0..(CHUNK * 2 + 12345)).map(|i| u8::try_from(i % 251).unwrap()).collect();
        let got = std::thread::scope(|s| {
            let h = s.spawn(|| {
                let mut got = Vec::new();
                for msg in &to_rx {
                    let (chunk, last) = match msg {
                        ToStorer::Piece(c) => (c, false),
                        ToStorer::End(pack) => (pack.out, true),
                    };
                    assert_eq!(chunk.bytes().as_ptr() as usize % DIRECT_ALIGN, 0);
                    assert!(last || chunk.bytes().len() == CHUNK, "only the last chunk is partial");
                    got.extend_from_slice(chunk.bytes());
                    free_tx.send(chunk.cleared()).unwrap();
                    if last {
                        break;
                    }
                }
                got
            });
            let mut out = ChunkOut::new(&free_rx, &to_tx).unwrap();
            for piece in data.chunks(65_576) {
                out.write_all(piece).unwrap();
            }
            let pack = FinishedPack { id: PackId([0; 32]), len: data.len() as u64, index: some_index(), out };
            ChunkOut::end(pack).unwrap();
            h.join().unwrap()
        });
        assert_eq!(got, data);
    }

    #[test]
    fn a_stopped_storer_fails_the_write() {
        let (free_tx, free_rx) = bounded(1);
        free_tx.send(Chunk::new()).unwrap();
        let (to_tx, to_rx) = bounded(1);
        drop(to_rx);
        drop(free_tx);
        let mut out = ChunkOut::new(&free_rx, &to_tx).unwrap();
        let err = out.write_all(&vec![1u8; CHUNK + 1]).unwrap_err();
        assert!(err.to_string().contains("storer stopped"), "{err}");
    }
}
