//! The NBD server against a small hand-written client over real sockets (unix
//! and TCP), with an in-memory export that records what reached it.
//!
//! The client here is written from the protocol spec with its own constants,
//! not from `filter::nbd::proto`, so a mistake there cannot hide itself.

// Test messages are small: their lengths and patterns fit the narrower types.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{server, Call, MemExport, TestServer, NAME};
use filter::nbd::{Export, Listen, LocalAddr, Server};

// ---------------------------------------------------------------- constants

const IHAVEOPT: &[u8; 8] = b"IHAVEOPT";
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const REPLY_MAGIC: u32 = 0x6744_6698;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_STARTTLS: u32 = 5;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_LIST_META_CONTEXT: u32 = 9;
const OPT_SET_META_CONTEXT: u32 = 10;
const OPT_EXTENDED_HEADERS: u32 = 11;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const REP_ERR_POLICY: u32 = 0x8000_0002;
const REP_ERR_INVALID: u32 = 0x8000_0003;
const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
const REP_ERR_TOO_BIG: u32 = 0x8000_0009;

const INFO_EXPORT: u16 = 0;
const INFO_NAME: u16 = 1;
const INFO_BLOCK_SIZE: u16 = 3;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_CACHE: u16 = 5;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_BLOCK_STATUS: u16 = 7;

const FLAG_FUA: u16 = 1;
const FLAG_NO_HOLE: u16 = 2;
const FLAG_DF: u16 = 4;
const FLAG_FAST_ZERO: u16 = 16;

const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;
const ESHUTDOWN: u32 = 108;

/// HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_TRIM | SEND_WRITE_ZEROES | CAN_MULTI_CONN
const EXPECTED_TRANSMISSION_FLAGS: u16 = 1 | 4 | 8 | 32 | 64 | 256;
const MIB: u64 = 1 << 20;

// ------------------------------------------------------------- test server

impl TestServer {
    fn unix(&self) -> Conn {
        Conn::new(Box::new(UnixStream::connect(self.unix_path()).unwrap()))
    }

    fn tcp(&self) -> Conn {
        Conn::new(Box::new(TcpStream::connect(self.tcp_addr()).unwrap()))
    }
}

// ------------------------------------------------------------- test client

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

struct Conn {
    s: Box<dyn Stream>,
}

#[derive(Debug, PartialEq, Eq)]
struct OptReply {
    option: u32,
    kind: u32,
    data: Vec<u8>,
}

impl Conn {
    fn new(s: Box<dyn Stream>) -> Conn {
        Conn { s }
    }

    fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.s.read_exact(&mut buf).unwrap();
        buf
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.read_n(2).try_into().unwrap())
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.read_n(4).try_into().unwrap())
    }

    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.read_n(8).try_into().unwrap())
    }

    /// Read the greeting and send client flags.
    fn greet(&mut self, client_flags: u32) {
        assert_eq!(self.read_n(8), b"NBDMAGIC");
        assert_eq!(self.read_n(8), b"IHAVEOPT");
        assert_eq!(self.u16(), 3, "handshake flags: FIXED_NEWSTYLE | NO_ZEROES");
        self.s.write_all(&client_flags.to_be_bytes()).unwrap();
    }

    fn send_opt(&mut self, option: u32, data: &[u8]) {
        let mut msg = IHAVEOPT.to_vec();
        msg.extend_from_slice(&option.to_be_bytes());
        msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
        msg.extend_from_slice(data);
        self.s.write_all(&msg).unwrap();
    }

    fn opt_reply(&mut self) -> OptReply {
        assert_eq!(self.u64(), OPT_REPLY_MAGIC);
        let option = self.u32();
        let kind = self.u32();
        let len = self.u32() as usize;
        OptReply { option, kind, data: self.read_n(len) }
    }

    /// Replies up to and including the first that is not `NBD_REP_INFO`/`NBD_REP_SERVER`.
    fn opt_replies(&mut self) -> Vec<OptReply> {
        let mut out = Vec::new();
        loop {
            let r = self.opt_reply();
            let done = r.kind != REP_INFO && r.kind != REP_SERVER;
            out.push(r);
            if done {
                return out;
            }
        }
    }

    fn info_data(name: &str, requests: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(requests.len() as u16).to_be_bytes());
        for r in requests {
            d.extend_from_slice(&r.to_be_bytes());
        }
        d
    }

    /// Full handshake with NBD_OPT_GO; returns (size, transmission flags).
    fn go(&mut self, name: &str) -> (u64, u16) {
        self.greet(3);
        self.send_opt(OPT_GO, &Self::info_data(name, &[INFO_BLOCK_SIZE]));
        let replies = self.opt_replies();
        assert_eq!(replies.last().unwrap().kind, REP_ACK, "GO failed: {replies:?}");
        let export = replies
            .iter()
            .find(|r| r.kind == REP_INFO && r.data[..2] == INFO_EXPORT.to_be_bytes())
            .expect("NBD_INFO_EXPORT");
        let size = u64::from_be_bytes(export.data[2..10].try_into().unwrap());
        let flags = u16::from_be_bytes(export.data[10..12].try_into().unwrap());
        (size, flags)
    }

    fn request(&mut self, cmd: u16, flags: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) {
        let mut msg = Vec::with_capacity(28 + payload.len());
        msg.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        msg.extend_from_slice(&flags.to_be_bytes());
        msg.extend_from_slice(&cmd.to_be_bytes());
        msg.extend_from_slice(&cookie.to_be_bytes());
        msg.extend_from_slice(&offset.to_be_bytes());
        msg.extend_from_slice(&len.to_be_bytes());
        msg.extend_from_slice(payload);
        self.s.write_all(&msg).unwrap();
    }

    /// (error, cookie) of the next simple reply.
    fn reply(&mut self) -> (u32, u64) {
        assert_eq!(self.u32(), REPLY_MAGIC, "simple reply magic");
        (self.u32(), self.u64())
    }

    fn write(&mut self, offset: u64, data: &[u8], flags: u16) -> u32 {
        self.request(CMD_WRITE, flags, 0xaaaa, offset, data.len() as u32, data);
        let (err, cookie) = self.reply();
        assert_eq!(cookie, 0xaaaa);
        err
    }

    fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.request(CMD_READ, 0, 0xbbbb, offset, len, &[]);
        let (err, cookie) = self.reply();
        assert_eq!(cookie, 0xbbbb);
        if err != 0 {
            return Err(err);
        }
        Ok(self.read_n(len as usize))
    }

    fn simple(&mut self, cmd: u16, flags: u16, offset: u64, len: u32) -> u32 {
        self.request(cmd, flags, 0xcccc, offset, len, &[]);
        let (err, cookie) = self.reply();
        assert_eq!(cookie, 0xcccc);
        err
    }

    /// True if the server closed the connection (EOF or reset) within 5 s.
    fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("unexpected read error: {e}"),
            }
            if Instant::now() > deadline {
                return false;
            }
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

// ------------------------------------------------------------------- tests

#[test]
fn listen_addresses_parse_with_clear_errors() {
    assert_eq!("unix:/run/x.sock".parse::<Listen>().unwrap(), Listen::Unix("/run/x.sock".into()));
    assert_eq!("tcp:127.0.0.1:10809".parse::<Listen>().unwrap(), Listen::Tcp("127.0.0.1:10809".into()));
    assert_eq!("tcp:[::1]:0".parse::<Listen>().unwrap(), Listen::Tcp("[::1]:0".into()));
    assert_eq!("tcp:localhost:1".parse::<Listen>().unwrap().to_string(), "tcp:localhost:1");
    for bad in ["", "/run/x.sock", "unix:", "tcp:", "tcp:host", "tcp::10809", "tcp:h:99999", "tcp:h:x", "udp:h:1"] {
        let err = bad.parse::<Listen>().unwrap_err().to_string();
        assert!(err.contains("unix:PATH or tcp:HOST:PORT"), "{bad:?} -> {err}");
        assert!(err.contains(&format!("{bad:?}")), "error should quote the input: {err}");
    }
}

#[test]
fn go_advertises_size_flags_and_block_sizes() {
    let (_export, srv) = server(4 * MIB as usize);
    for name in ["", NAME] {
        let mut c = srv.unix();
        c.greet(3);
        c.send_opt(OPT_GO, &Conn::info_data(name, &[INFO_BLOCK_SIZE, INFO_NAME]));
        let replies = c.opt_replies();
        assert!(replies.iter().all(|r| r.option == OPT_GO));
        assert_eq!(replies.last().unwrap().kind, REP_ACK);
        let infos: Vec<&Vec<u8>> = replies.iter().filter(|r| r.kind == REP_INFO).map(|r| &r.data).collect();
        let mut expected_export = INFO_EXPORT.to_be_bytes().to_vec();
        expected_export.extend_from_slice(&(4 * MIB).to_be_bytes());
        expected_export.extend_from_slice(&EXPECTED_TRANSMISSION_FLAGS.to_be_bytes());
        assert!(infos.contains(&&expected_export), "{infos:?}");
        let mut expected_bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for v in [1u32, 4096, 32 << 20] {
            expected_bs.extend_from_slice(&v.to_be_bytes());
        }
        assert!(infos.contains(&&expected_bs), "{infos:?}");
        let mut expected_name = INFO_NAME.to_be_bytes().to_vec();
        expected_name.extend_from_slice(NAME.as_bytes());
        assert!(infos.contains(&&expected_name), "{infos:?}");
        // transmission works right after the ACK
        assert_eq!(c.read(0, 512).unwrap(), vec![0; 512]);
    }
}

#[test]
fn info_and_unknown_export_then_go_on_tcp() {
    let (_export, srv) = server(MIB as usize);
    let mut c = srv.tcp();
    c.greet(1);
    c.send_opt(OPT_INFO, &Conn::info_data("nope", &[]));
    let r = c.opt_replies();
    assert_eq!(r.len(), 1, "no NBD_REP_INFO for an unknown export: {r:?}");
    assert_eq!(r[0].kind, REP_ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&r[0].data).contains("nope"));
    // a message quoting a 4096-byte name still fits the 4096-byte string limit
    c.send_opt(OPT_INFO, &Conn::info_data(&"n".repeat(4096), &[]));
    let r = c.opt_replies();
    assert_eq!(r[0].kind, REP_ERR_UNKNOWN);
    assert!(r[0].data.len() <= 4096, "error message of {} bytes", r[0].data.len());
    c.send_opt(OPT_INFO, &Conn::info_data(NAME, &[]));
    let r = c.opt_replies();
    assert_eq!(r.last().unwrap().kind, REP_ACK);
    assert!(r.iter().any(|r| r.kind == REP_INFO && r.data[..2] == [0, 0]));
    // still in option haggling after INFO: GO works
    c.send_opt(OPT_GO, &Conn::info_data(NAME, &[]));
    assert_eq!(c.opt_replies().last().unwrap().kind, REP_ACK);
    assert_eq!(c.write(10, b"hello", 0), 0);
    assert_eq!(c.read(10, 5).unwrap(), b"hello");
}

#[test]
fn list_names_the_disk() {
    let (_export, srv) = server(MIB as usize);
    let mut c = srv.unix();
    c.greet(3);
    c.send_opt(OPT_LIST, &[]);
    let r = c.opt_replies();
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0].kind, REP_SERVER);
    let mut expected = (NAME.len() as u32).to_be_bytes().to_vec();
    expected.extend_from_slice(NAME.as_bytes());
    assert_eq!(r[0].data, expected);
    assert_eq!(r[1], OptReply { option: OPT_LIST, kind: REP_ACK, data: vec![] });
    // LIST with data is invalid, and the session goes on
    c.send_opt(OPT_LIST, b"x");
    assert_eq!(c.opt_reply().kind, REP_ERR_INVALID);
    c.send_opt(OPT_ABORT, &[]);
    assert_eq!(c.opt_reply(), OptReply { option: OPT_ABORT, kind: REP_ACK, data: vec![] });
    assert!(c.closed());
}

#[test]
fn export_name_honours_no_zeroes() {
    let (_export, srv) = server(MIB as usize);
    for (client_flags, zeroes) in [(3u32, 0usize), (1, 124), (0, 124)] {
        let mut c = srv.unix();
        c.greet(client_flags);
        c.send_opt(OPT_EXPORT_NAME, NAME.as_bytes());
        assert_eq!(c.u64(), MIB);
        assert_eq!(c.u16(), EXPECTED_TRANSMISSION_FLAGS);
        assert_eq!(c.read_n(zeroes), vec![0; zeroes]);
        // the next bytes are the reply to our first request, not padding
        assert_eq!(c.write(0, b"x", 0), 0);
        assert_eq!(c.read(0, 1).unwrap(), b"x");
    }
}

#[test]
fn export_name_of_unknown_export_closes() {
    let (_export, srv) = server(MIB as usize);
    let mut c = srv.unix();
    c.greet(3);
    c.send_opt(OPT_EXPORT_NAME, b"other");
    assert!(c.closed());
}

#[test]
fn unsupported_and_malformed_options_get_errors_and_the_session_goes_on() {
    let (_export, srv) = server(MIB as usize);
    let mut c = srv.unix();
    c.greet(3);
    for opt in [OPT_STRUCTURED_REPLY, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT, OPT_EXTENDED_HEADERS, 4, 12, 0xdead]
    {
        c.send_opt(opt, b"some data");
        let r = c.opt_reply();
        assert_eq!((r.option, r.kind), (opt, REP_ERR_UNSUP), "option {opt}");
    }
    c.send_opt(OPT_STARTTLS, &[]);
    assert_eq!(c.opt_reply().kind, REP_ERR_POLICY);
    // malformed GO/INFO: too short, name past the end, wrong request count
    for data in [vec![0u8; 3], vec![0, 0, 0, 9, 0, 0], vec![0, 0, 0, 0, 0, 2, 0, 1]] {
        c.send_opt(OPT_GO, &data);
        assert_eq!(c.opt_reply().kind, REP_ERR_INVALID, "{data:?}");
    }
    // an oversized option is read and refused, not fatal
    c.send_opt(OPT_GO, &vec![0u8; 70_000]);
    assert_eq!(c.opt_reply().kind, REP_ERR_TOO_BIG);
    c.send_opt(0x4242, &vec![0u8; 70_000]);
    assert_eq!(c.opt_reply().kind, REP_ERR_UNSUP);
    // after all that, GO still works
    c.send_opt(OPT_GO, &Conn::info_data("", &[]));
    assert_eq!(c.opt_replies().last().unwrap().kind, REP_ACK);
    assert_eq!(c.read(0, 4).unwrap(), vec![0; 4]);
}

#[test]
fn unknown_client_flags_or_bad_option_magic_close_the_connection() {
    let (_export, srv) = server(MIB as usize);
    let mut c = srv.unix();
    c.greet(0x8000_0001);
    assert!(c.closed());

    let mut c = srv.unix();
    c.greet(3);
    c.s.write_all(b"IHAVEOPX\0\0\0\x07\0\0\0\0").unwrap();
    assert!(c.closed());

    // the server is still fine
    let mut c = srv.unix();
    c.go(NAME);
    assert_eq!(c.read(0, 1).unwrap(), [0]);
}

#[test]
fn reads_and_writes_unaligned_spanning_and_at_the_end() {
    let size = 4 * MIB as usize;
    let (export, srv) = server(size);
    for mut c in [srv.unix(), srv.tcp()] {
        c.go(NAME);
        assert_eq!(c.simple(CMD_WRITE_ZEROES, 0, 0, size as u32), 0);
        // unaligned, spanning several 4 KiB blocks
        let data = pattern(10_000, 7);
        assert_eq!(c.write(4093, &data, 0), 0);
        assert_eq!(c.read(4093, 10_000).unwrap(), data);
        assert_eq!(export.bytes(4093, 10_000), data);
        assert_eq!(c.read(4090, 6).unwrap(), [0, 0, 0, data[0], data[1], data[2]]);
        // the very last bytes of the export
        let tail = pattern(777, 9);
        assert_eq!(c.write(size as u64 - 777, &tail, FLAG_FUA), 0);
        assert_eq!(c.read(size as u64 - 777, 777).unwrap(), tail);
        assert_eq!(c.read(size as u64 - 1, 1).unwrap(), [tail[776]]);
        // one large request (the advertised maximum is 32 MiB; the export is 4)
        let big = pattern(size, 3);
        assert_eq!(c.write(0, &big, 0), 0);
        assert_eq!(c.read(0, size as u32).unwrap(), big);
        // zero-length requests are harmless
        assert_eq!(c.write(5, &[], 0), 0);
        assert_eq!(c.read(5, 0).unwrap(), Vec::<u8>::new());
        c.request(CMD_DISC, 0, 1, 0, 0, &[]);
        assert!(c.closed());
    }
}

#[test]
fn flush_fua_trim_and_write_zeroes_reach_the_export_with_their_flags() {
    let (export, srv) = server(MIB as usize);
    let mut c = srv.unix();
    c.go(NAME);
    assert_eq!(c.write(0, &[1; 512], FLAG_FUA), 0);
    assert_eq!(c.simple(CMD_FLUSH, 0, 0, 0), 0);
    assert_eq!(c.simple(CMD_TRIM, 0, 4096, 8192), 0);
    assert_eq!(c.simple(CMD_TRIM, FLAG_FUA, 0, 1), 0);
    assert_eq!(c.write(100, &[9; 100], 0), 0);
    assert_eq!(c.simple(CMD_WRITE_ZEROES, 0, 150, 10), 0);
    assert_eq!(c.simple(CMD_WRITE_ZEROES, FLAG_NO_HOLE | FLAG_FUA, 160, 10), 0);
    assert_eq!(c.simple(CMD_TRIM, 0, 0, 0), 0);
    assert_eq!(c.simple(CMD_WRITE_ZEROES, 0, 0, 0), 0);
    assert_eq!(
        export.calls(),
        vec![
            Call::Write { offset: 0, len: 512, fua: true },
            Call::Flush,
            Call::Trim { offset: 4096, len: 8192, fua: false },
            Call::Trim { offset: 0, len: 1, fua: true },
            Call::Write { offset: 100, len: 100, fua: false },
            Call::Zero { offset: 150, len: 10, may_trim: true, fua: false },
            Call::Zero { offset: 160, len: 10, may_trim: false, fua: true },
        ],
        "zero-length trim and write-zeroes are not passed on"
    );
    let got = c.read(100, 100).unwrap();
    assert_eq!(&got[..50], &[9; 50]);
    assert_eq!(&got[50..70], &[0; 20]);
    assert_eq!(&got[70..], &[9; 30]);
}

#[test]
fn refused_requests_get_the_spec_errno_and_the_connection_goes_on() {
    let size = MIB;
    let (export, srv) = server(size as usize);
    let mut c = srv.unix();
    c.go(NAME);
    // beyond the end: EINVAL for read and trim, ENOSPC for write and write-zeroes
    assert_eq!(c.read(size - 1, 2), Err(EINVAL));
    assert_eq!(c.read(size + 1, 0), Err(EINVAL));
    assert_eq!(c.write(size - 1, &[1, 2], 0), ENOSPC);
    assert_eq!(c.simple(CMD_TRIM, 0, size, 1), EINVAL);
    assert_eq!(c.simple(CMD_WRITE_ZEROES, 0, size - 10, 11), ENOSPC);
    // offset + length overflowing 64 bits
    assert_eq!(c.read(u64::MAX - 3, 8), Err(EINVAL));
    assert_eq!(c.write(u64::MAX - 3, &[0; 8], 0), ENOSPC);
    // longer than the 32 MiB maximum: EINVAL, and the write's payload is consumed
    assert_eq!(c.read(0, (32 << 20) + 1), Err(EINVAL));
    assert_eq!(c.write(0, &vec![0x5a; (32 << 20) + 1], 0), EINVAL);
    // unsupported commands and flags
    assert_eq!(c.simple(CMD_CACHE, 0, 0, 512), EINVAL);
    assert_eq!(c.simple(CMD_BLOCK_STATUS, 0, 0, 512), EINVAL);
    assert_eq!(c.simple(99, 0, 0, 512), EINVAL);
    assert_eq!(c.simple(CMD_READ, FLAG_DF, 0, 0), EINVAL);
    assert_eq!(c.simple(CMD_WRITE_ZEROES, FLAG_FAST_ZERO, 0, 512), EINVAL);
    assert_eq!(c.write(0, &[7; 16], FLAG_NO_HOLE), EINVAL);
    assert_eq!(c.write(0, &[7; 16], 0x8000), EINVAL);
    // nothing refused reached the export, and the stream is still in step
    assert!(export.calls().is_empty(), "{:?}", export.calls());
    assert_eq!(c.write(0, &[7; 16], 0), 0);
    assert_eq!(c.read(0, 16).unwrap(), [7; 16]);
}

#[test]
fn export_errors_map_to_nbd_errors() {
    let (export, srv) = server(MIB as usize);
    let mut c = srv.unix();
    c.go(NAME);
    for (os_errno, nbd_errno) in
        [(28, ENOSPC), (30 /* EROFS */, EPERM), (5, EIO), (9 /* EBADF */, EIO), (122 /* EDQUOT */, ENOSPC)]
    {
        *export.fail_at.lock().unwrap() = Some((4096, os_errno));
        assert_eq!(c.write(4096, &[1; 10], 0), nbd_errno, "OS error {os_errno}");
        assert_eq!(c.read(4096, 10), Err(nbd_errno), "OS error {os_errno}");
        assert_eq!(c.simple(CMD_TRIM, 0, 4096, 1), nbd_errno);
        assert_eq!(c.simple(CMD_WRITE_ZEROES, 0, 4096, 1), nbd_errno);
    }
    *export.fail_at.lock().unwrap() = None;
    assert_eq!(c.write(4096, &[1; 10], 0), 0);
}

#[test]
fn bad_request_magic_closes_only_that_connection() {
    let (_export, srv) = server(MIB as usize);
    let mut good = srv.unix();
    good.go(NAME);
    assert_eq!(good.write(0, b"abc", 0), 0);
    let mut bad = srv.tcp();
    bad.go(NAME);
    assert_eq!(bad.write(3, b"def", 0), 0);
    bad.s.write_all(&[0x25, 0x60, 0x95, 0x14]).unwrap();
    bad.s.write_all(&[0; 24]).unwrap();
    assert!(bad.closed());
    assert_eq!(good.read(0, 6).unwrap(), b"abcdef");
    let mut again = srv.tcp();
    again.go(NAME);
    assert_eq!(again.read(0, 6).unwrap(), b"abcdef");
}

#[test]
fn sixty_four_pipelined_writes_are_all_answered() {
    let (export, srv) = server(4 * MIB as usize);
    for mut c in [srv.unix(), srv.tcp()] {
        c.go("");
        let mut msg = Vec::new();
        for i in 0..64u64 {
            let len = 1000 + 37 * i as usize;
            let data = pattern(len, i as u8);
            msg.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
            msg.extend_from_slice(&0u16.to_be_bytes());
            msg.extend_from_slice(&CMD_WRITE.to_be_bytes());
            msg.extend_from_slice(&(0x1000 + i).to_be_bytes());
            msg.extend_from_slice(&(i * 8192).to_be_bytes());
            msg.extend_from_slice(&(len as u32).to_be_bytes());
            msg.extend_from_slice(&data);
        }
        // all 64 go out before any reply is read
        c.s.write_all(&msg).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..64 {
            let (err, cookie) = c.reply();
            assert_eq!(err, 0);
            assert!((0x1000..0x1040).contains(&cookie), "unexpected cookie {cookie:#x}");
            assert!(seen.insert(cookie), "cookie {cookie:#x} answered twice");
        }
        for i in 0..64u64 {
            let len = 1000 + 37 * i as usize;
            assert_eq!(export.bytes(i * 8192, len), pattern(len, i as u8), "write {i}");
        }
        // 64 pipelined reads, answered with their data
        let mut msg = Vec::new();
        for i in 0..64u64 {
            msg.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
            msg.extend_from_slice(&[0, 0, 0, 0]);
            msg.extend_from_slice(&i.to_be_bytes());
            msg.extend_from_slice(&(i * 8192).to_be_bytes());
            msg.extend_from_slice(&(1000 + 37 * i as u32).to_be_bytes());
        }
        c.s.write_all(&msg).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..64 {
            let (err, cookie) = c.reply();
            assert_eq!(err, 0);
            let len = 1000 + 37 * cookie as usize;
            assert_eq!(c.read_n(len), pattern(len, cookie as u8), "read {cookie}");
            assert!(seen.insert(cookie));
        }
        assert_eq!(seen.len(), 64);
    }
}

#[test]
fn requests_run_in_parallel_and_reply_out_of_order() {
    let mut export = MemExport::new(MIB as usize);
    export.rendezvous = Some((0, 4096));
    let export = Arc::new(export);
    let srv = TestServer::start(Arc::clone(&export));
    let mut c = srv.unix();
    c.go(NAME);
    // The read at 0 blocks until the read at 4096 has started: a server that
    // ran one request at a time would fail the first with EIO after 5 s.
    c.request(CMD_READ, 0, 1, 0, 16, &[]);
    c.request(CMD_READ, 0, 2, 4096, 16, &[]);
    let (err, cookie) = c.reply();
    assert_eq!((err, cookie), (0, 2), "the second request should finish first");
    c.read_n(16);
    let (err, cookie) = c.reply();
    assert_eq!((err, cookie), (0, 1));
    c.read_n(16);
}

#[test]
fn concurrent_connections_each_see_their_own_writes() {
    let (export, srv) = server(8 * MIB as usize);
    let srv = Arc::new(srv);
    let threads: Vec<_> = (0..8u64)
        .map(|i| {
            let srv = Arc::clone(&srv);
            thread::spawn(move || {
                let mut c = if i % 2 == 0 { srv.unix() } else { srv.tcp() };
                c.go(NAME);
                for round in 0..20u64 {
                    let data = pattern(4096 + round as usize, (i * 20 + round) as u8);
                    let offset = i * MIB + round * 8192;
                    assert_eq!(c.write(offset, &data, 0), 0);
                    assert_eq!(c.read(offset, data.len() as u32).unwrap(), data);
                }
                assert_eq!(c.simple(CMD_FLUSH, 0, 0, 0), 0);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(export.calls().iter().filter(|c| **c == Call::Flush).count(), 8);
}

#[test]
fn disc_finishes_in_flight_requests_before_closing() {
    let mut export = MemExport::new(MIB as usize);
    export.slow_write = Some((8192, Duration::from_millis(300)));
    let export = Arc::new(export);
    let srv = TestServer::start(Arc::clone(&export));
    let mut c = srv.unix();
    c.go(NAME);
    c.request(CMD_WRITE, 0, 77, 8192, 4, b"slow");
    c.request(CMD_DISC, 0, 78, 0, 0, &[]);
    assert_eq!(c.reply(), (0, 77), "the write in flight at DISC is answered");
    assert!(c.closed());
    assert_eq!(export.bytes(8192, 4), b"slow");
}

#[test]
fn client_eof_mid_request_closes_quietly() {
    let (export, srv) = server(MIB as usize);
    // EOF in the middle of a header
    let mut c = srv.unix();
    c.go(NAME);
    c.s.write_all(&REQUEST_MAGIC.to_be_bytes()).unwrap();
    drop(c);
    // EOF in the middle of a write payload, after a complete write
    let mut c = srv.tcp();
    c.go(NAME);
    c.request(CMD_WRITE, 0, 1, 0, 4, b"full");
    c.request(CMD_WRITE, 0, 2, 100, 1000, &[1; 10]);
    drop(c);
    // the server is fine, the complete write landed, the partial one did not
    let mut c = srv.unix();
    c.go(NAME);
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.read(0, 4).unwrap() != b"full" {
        assert!(Instant::now() < deadline, "the complete write never landed");
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(c.read(100, 10).unwrap(), [0; 10]);
    assert!(!export.calls().iter().any(|call| matches!(call, Call::Write { offset: 100, .. })));
}

#[test]
fn shutdown_waits_for_in_flight_writes_then_refuses_connections() {
    let mut export = MemExport::new(MIB as usize);
    export.slow_write = Some((0, Duration::from_millis(500)));
    let export = Arc::new(export);
    let mut srv = TestServer::start(Arc::clone(&export));
    let socket = srv.unix_path().to_path_buf();
    let LocalAddr::Tcp(tcp) = srv.addrs[1] else { panic!() };
    let mut idle = srv.tcp();
    idle.go(NAME);
    let mut handshaking = srv.unix();
    handshaking.greet(3);
    let mut c = srv.unix();
    c.go(NAME);
    c.request(CMD_WRITE, 0, 5, 0, 8, b"durable!");
    while !export.slow_write_started.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(1));
    }
    let started = Instant::now();
    srv.stop();
    // run() returned only after the write reached the export, and nothing of
    // the server holds the export any more (the CLI unwraps its Arc), though
    // the shutdown handle is still alive
    assert_eq!(export.bytes(0, 8), b"durable!");
    assert_eq!(Arc::strong_count(&export), 1, "the server still holds the export after run() returned");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(c.reply(), (0, 5), "the in-flight write was answered");
    assert!(c.closed());
    assert!(idle.closed());
    assert!(handshaking.closed());
    assert!(!socket.exists(), "the unix socket file is removed");
    assert!(TcpStream::connect(tcp).is_err(), "no more TCP connections");
}

#[test]
fn requests_waiting_when_shutdown_begins_get_eshutdown() {
    // 1024 reads held at a gate fill the connection's in-flight budget (256
    // requests), so the reader stops with the rest of them, and a write,
    // still unread or waiting for room. Shutdown begins; the gate opens.
    // Requests that had started finish normally; the rest, and the write,
    // are answered NBD_ESHUTDOWN and never run.
    let mut export = MemExport::new(MIB as usize);
    export.gate = Some(0);
    let export = Arc::new(export);
    let mut srv = TestServer::start(Arc::clone(&export));
    let mut c = srv.unix();
    c.go(NAME);
    let mut msg = Vec::new();
    for cookie in 0..1024u64 {
        msg.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        msg.extend_from_slice(&[0, 0, 0, CMD_READ as u8]);
        msg.extend_from_slice(&cookie.to_be_bytes());
        msg.extend_from_slice(&0u64.to_be_bytes());
        msg.extend_from_slice(&1u32.to_be_bytes());
    }
    msg.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    msg.extend_from_slice(&[0, 0, 0, CMD_WRITE as u8]);
    msg.extend_from_slice(&5000u64.to_be_bytes());
    msg.extend_from_slice(&64u64.to_be_bytes());
    msg.extend_from_slice(&4u32.to_be_bytes());
    msg.extend_from_slice(b"late");
    c.s.write_all(&msg).unwrap();
    thread::sleep(Duration::from_millis(200));
    srv.handle.shutdown();
    *export.gate_open.lock().unwrap() = true;
    export.started_cond.notify_all();
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..1025 {
        let (err, cookie) = c.reply();
        match (err, cookie) {
            (0, c_) if c_ < 1024 => {
                c.read_n(1);
                ok += 1;
            }
            (ESHUTDOWN, _) => refused += 1,
            other => panic!("unexpected reply {other:?}"),
        }
        if cookie == 5000 {
            assert_eq!(err, ESHUTDOWN, "the write waiting at shutdown is refused");
        }
    }
    assert!(c.closed());
    srv.stop();
    assert!((4..=256).contains(&ok), "{ok} reads ran");
    assert_eq!(ok + refused, 1025);
    assert_eq!(export.bytes(64, 4), [0; 4], "the refused write never ran");
}

#[test]
fn shutdown_does_not_hang_on_a_client_that_stops_reading() {
    let export = Arc::new(MemExport::new(32 * MIB as usize));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::bind(&[Listen::Unix(dir.path().join("s"))], NAME, Arc::clone(&export) as Arc<dyn Export>)
        .unwrap()
        .with_shutdown_grace(Duration::from_millis(300));
    let LocalAddr::Unix(path) = server.local_addrs()[0].clone() else { panic!() };
    let handle = server.shutdown_handle();
    let thread = thread::spawn(move || server.run());
    let mut c = Conn::new(Box::new(UnixStream::connect(path).unwrap()));
    c.go(NAME);
    // 32 MiB of read replies that are never read fill every socket buffer
    // and block every worker; then a write, queued, that must still reach
    // the export before run() returns.
    for cookie in 0..8u64 {
        c.request(CMD_READ, 0, cookie, 0, 4 << 20, &[]);
    }
    c.request(CMD_WRITE, 0, 99, 0, 4, b"last");
    thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    handle.shutdown();
    while !thread.is_finished() {
        assert!(started.elapsed() < Duration::from_secs(10), "run() hangs on a client that stops reading");
        thread::sleep(Duration::from_millis(10));
    }
    thread.join().unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300), "the grace period was not honoured");
    assert_eq!(export.bytes(0, 4), b"last", "the queued write ran before run() returned");
}

#[test]
fn stale_unix_socket_is_replaced_but_live_sockets_and_files_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.sock");
    // a stale socket file: bound, then its listener dropped without unlink
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let export: Arc<dyn Export> = Arc::new(MemExport::new(4096));
    let server = Server::bind(&[Listen::Unix(path.clone())], NAME, Arc::clone(&export)).unwrap();
    // while it is live, a second server must not steal the path
    let err = Server::bind(&[Listen::Unix(path.clone())], NAME, Arc::clone(&export)).unwrap_err();
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    drop(server);
    assert!(!path.exists(), "dropping the server removes its socket");
    // a regular file is never deleted
    std::fs::write(&path, b"precious").unwrap();
    let err = Server::bind(&[Listen::Unix(path.clone())], NAME, Arc::clone(&export)).unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn tcp_bind_errors_name_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let export: Arc<dyn Export> = Arc::new(MemExport::new(4096));
    let err = Server::bind(&[Listen::Tcp(addr.clone())], NAME, export).unwrap_err();
    assert!(err.to_string().contains(&format!("tcp:{addr}")), "{err}");
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
}

#[test]
fn uris_are_what_libnbd_expects() {
    assert_eq!(LocalAddr::Unix(Path::new("/r/x.sock").into()).uri(), "nbd+unix:///?socket=/r/x.sock");
    assert_eq!(LocalAddr::Tcp("127.0.0.1:10809".parse().unwrap()).uri(), "nbd://127.0.0.1:10809/");
}

// ------------------------------------------------------------------ STARTTLS

const REP_ERR_TLS_REQD: u32 = 0x8000_0005;

/// A stand-in for TLS that does what a real upgrade does with the socket
/// (a handshake that can fail, then a pump between the encrypted socket and
/// the local plaintext stream on two threads), with a toy cipher: the client
/// sends `TOYTLS` + a one-byte key, gets `OK` back, and every byte after
/// that is XORed with the key both ways. The real rustls upgrade is tested
/// end to end with QEMU in cli/tests/nbd_tls.rs.
#[derive(Debug)]
struct ToyTls;

impl filter::nbd::TlsUpgrade for ToyTls {
    fn upgrade(&self, mut sock: TcpStream, _peer: &str, deadline: Instant) -> io::Result<UnixStream> {
        sock.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))?;
        let mut hello = [0u8; 7];
        sock.read_exact(&mut hello)?;
        if &hello[..6] != b"TOYTLS" {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "not a toy TLS hello"));
        }
        let key = hello[6];
        sock.write_all(b"OK")?;
        sock.set_read_timeout(None)?;
        let (plain, inner) = UnixStream::pair()?;
        let pump = |mut from: Box<dyn Read + Send>, mut to: Box<dyn Write + Send>, end: Box<dyn Fn() + Send>| {
            thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n @ 1..) = from.read(&mut buf) {
                    buf[..n].iter_mut().for_each(|b| *b ^= key);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                end();
            })
        };
        let (s1, s2, i1, i2) = (sock.try_clone()?, sock.try_clone()?, inner.try_clone()?, inner.try_clone()?);
        let (s3, i3) = (sock.try_clone()?, inner.try_clone()?);
        pump(
            Box::new(sock),
            Box::new(inner),
            Box::new(move || {
                let _ = i3.shutdown(std::net::Shutdown::Write);
            }),
        );
        pump(
            Box::new(i1),
            Box::new(s1),
            Box::new(move || {
                let _ = s3.shutdown(std::net::Shutdown::Both);
                let _ = i2.shutdown(std::net::Shutdown::Both);
            }),
        );
        drop(s2);
        Ok(plain)
    }
}

/// The client side of [`ToyTls`] after the hello.
struct Toy {
    s: TcpStream,
    key: u8,
}

impl Read for Toy {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.s.read(buf)?;
        buf[..n].iter_mut().for_each(|b| *b ^= self.key);
        Ok(n)
    }
}

impl Write for Toy {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let x: Vec<u8> = buf.iter().map(|b| b ^ self.key).collect();
        self.s.write_all(&x)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tls_server(size: usize, timeout: Duration) -> (Arc<MemExport>, TestServer) {
    let export = Arc::new(MemExport::new(size));
    let options = filter::nbd::Options {
        tls: Some(Arc::new(ToyTls)),
        handshake_timeout: timeout,
        ..filter::nbd::Options::default()
    };
    let srv = TestServer::start_with(Arc::clone(&export), NAME, options);
    (export, srv)
}

/// Greet over TCP, STARTTLS, toy hello with `key`; the connection is then "encrypted".
fn start_toy_tls(srv: &TestServer, key: u8) -> Conn {
    let mut tcp = TcpStream::connect(srv.tcp_addr()).unwrap();
    let mut c = Conn::new(Box::new(tcp.try_clone().unwrap()));
    c.greet(3);
    c.send_opt(OPT_STARTTLS, &[]);
    assert_eq!(c.opt_reply(), OptReply { option: OPT_STARTTLS, kind: REP_ACK, data: vec![] });
    tcp.write_all(b"TOYTLS").unwrap();
    tcp.write_all(&[key]).unwrap();
    let mut ok = [0u8; 2];
    tcp.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"OK");
    Conn::new(Box::new(Toy { s: tcp, key }))
}

#[test]
fn with_tls_every_option_but_starttls_and_abort_is_refused_until_tls_and_export_name_closes() {
    let (export, srv) = tls_server(MIB as usize, Duration::from_secs(10));
    let mut c = srv.tcp();
    c.greet(3);
    for (opt, data) in [
        (OPT_GO, Conn::info_data(NAME, &[INFO_NAME])),
        (OPT_INFO, Conn::info_data("", &[])),
        (OPT_LIST, vec![]),
        (OPT_STRUCTURED_REPLY, vec![]),
        (0xdead, b"x".to_vec()),
    ] {
        c.send_opt(opt, &data);
        let r = c.opt_reply();
        assert_eq!((r.option, r.kind), (opt, REP_ERR_TLS_REQD), "option {opt}: {r:?}");
        assert!(!String::from_utf8_lossy(&r.data).contains(NAME), "the export's name leaks: {r:?}");
    }
    // EXPORT_NAME cannot be refused with an error: the connection ends,
    // with nothing of the export sent.
    c.send_opt(OPT_EXPORT_NAME, NAME.as_bytes());
    assert!(c.closed());
    // ABORT is acknowledged.
    let mut c = srv.tcp();
    c.greet(3);
    c.send_opt(OPT_ABORT, &[]);
    assert_eq!(c.opt_reply().kind, REP_ACK);
    assert!(export.calls().is_empty());
}

#[test]
fn after_starttls_the_session_runs_over_the_upgraded_stream_and_a_second_starttls_is_refused() {
    let (export, srv) = tls_server(MIB as usize, Duration::from_secs(10));
    let mut c = start_toy_tls(&srv, 0x5a);
    c.send_opt(OPT_STARTTLS, &[]);
    let r = c.opt_reply();
    assert_eq!((r.option, r.kind), (OPT_STARTTLS, REP_ERR_INVALID), "{r:?}");
    c.send_opt(OPT_LIST, &[]);
    let replies = c.opt_replies();
    assert_eq!(replies.last().unwrap().kind, REP_ACK, "{replies:?}");
    c.send_opt(OPT_GO, &Conn::info_data(NAME, &[]));
    let replies = c.opt_replies();
    assert_eq!(replies.last().unwrap().kind, REP_ACK, "{replies:?}");
    assert_eq!(c.write(4096, b"over toy tls", 0), 0);
    assert_eq!(c.read(4096, 12).unwrap(), b"over toy tls");
    assert_eq!(export.bytes(4096, 12), b"over toy tls");
    assert_eq!(export.calls(), vec![Call::Write { offset: 4096, len: 12, fua: false }]);
    // the server's shutdown reaches a connection behind the upgrade
    c.request(CMD_DISC, 0, 1, 0, 0, &[]);
    assert!(c.closed());
}

#[test]
fn with_tls_a_failed_upgrade_or_bytes_smuggled_after_starttls_end_the_connection() {
    let (export, srv) = tls_server(MIB as usize, Duration::from_secs(10));
    // not the toy hello: the upgrade fails
    let mut c = srv.tcp();
    c.greet(3);
    c.send_opt(OPT_STARTTLS, &[]);
    assert_eq!(c.opt_reply().kind, REP_ACK);
    c.s.write_all(b"PLAINTEXT").unwrap();
    assert!(c.closed());
    // STARTTLS and a plaintext GO in one write: the GO must not be obeyed
    let mut c = srv.tcp();
    c.greet(3);
    let mut msg = Vec::new();
    for (opt, data) in [(OPT_STARTTLS, vec![]), (OPT_GO, Conn::info_data(NAME, &[]))] {
        msg.extend_from_slice(IHAVEOPT);
        msg.extend_from_slice(&opt.to_be_bytes());
        msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
        msg.extend_from_slice(&data);
    }
    c.s.write_all(&msg).unwrap();
    assert_eq!(c.opt_reply().kind, REP_ACK);
    assert!(c.closed());
    assert!(export.calls().is_empty());
}

#[test]
fn with_tls_the_handshake_timeout_covers_the_tls_handshake() {
    let (_export, srv) = tls_server(MIB as usize, Duration::from_millis(500));
    let mut c = srv.tcp();
    c.greet(3);
    c.send_opt(OPT_STARTTLS, &[]);
    assert_eq!(c.opt_reply().kind, REP_ACK);
    let t = Instant::now();
    // say nothing more: dropped at the deadline
    assert!(c.closed());
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

#[test]
fn with_tls_unix_sockets_stay_plaintext() {
    let (_export, srv) = tls_server(MIB as usize, Duration::from_secs(10));
    let mut c = srv.unix();
    c.greet(3);
    c.send_opt(OPT_STARTTLS, &[]);
    assert_eq!(c.opt_reply().kind, REP_ERR_POLICY);
    c.send_opt(OPT_GO, &Conn::info_data(NAME, &[]));
    assert_eq!(c.opt_replies().last().unwrap().kind, REP_ACK);
    assert_eq!(c.read(0, 2).unwrap(), [0, 0]);
}
