//! Serve a raw file over NBD with a plain `pread`/`pwrite` export: the
//! filter's NBD server without the filter, for comparing against qemu-nbd.
//!
//! ```text
//! cargo build --release -p filter --example nbd_file_server
//! target/release/examples/nbd_file_server IMAGE unix:/tmp/x.sock [tcp:127.0.0.1:10809 ...]
//! ```
//!
//! Like `qemu-nbd -f raw` with its defaults: the page cache is used
//! (writeback), flush is `fdatasync`, FUA writes are followed by `fdatasync`,
//! trim is ignored (qemu-nbd's default `--discard=ignore`), write-zeroes
//! writes zeroes. Runs until killed.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use filter::nbd::{Export, Listen, Server};

struct FileExport {
    file: File,
    size: u64,
}

static ZEROES: [u8; 1 << 20] = [0; 1 << 20];

impl Export for FileExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn preferred_block_size(&self) -> u32 {
        4096
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn trim(&self, _offset: u64, _len: u64, _fua: bool) -> io::Result<()> {
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, _may_trim: bool, fua: bool) -> io::Result<()> {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZEROES.len() as u64);
            let n = usize::try_from(n).map_err(io::Error::other)?;
            self.file.write_all_at(&ZEROES[..n], offset + done)?;
            done += n as u64;
        }
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: nbd_file_server IMAGE LISTEN [LISTEN...]   (LISTEN: unix:PATH or tcp:HOST:PORT)");
        std::process::exit(2);
    }
    let file = OpenOptions::new().read(true).write(true).open(&args[0])?;
    let size = file.metadata()?.len();
    let listens = args[1..]
        .iter()
        .map(|a| a.parse::<Listen>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let server = Server::bind(&listens, "", Arc::new(FileExport { file, size }))?;
    for addr in server.local_addrs() {
        println!("{}", addr.uri());
    }
    server.run()
}
