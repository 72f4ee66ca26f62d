//! The NBD wire format: constants from the protocol spec (`doc/proto.md` of
//! NetworkBlockDevice/nbd) and pure parsers and serializers for every message
//! this server reads or writes.
//!
//! Nothing here does I/O, allocates more than a reply's bytes, or panics on any
//! input, so the fuzz targets in `fuzz/fuzz_targets/` feed it arbitrary bytes.
//! All integers on the wire are big-endian.

use std::io;

/// The first magic of every handshake: ASCII `NBDMAGIC`.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// The newstyle handshake magic and option request magic: ASCII `IHAVEOPT`.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every fixed-newstyle option reply.
pub const NBD_OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of every transmission request.
pub const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of every simple reply.
pub const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flag: the server speaks fixed newstyle.
pub const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;
/// The handshake flags this server sends.
pub const SERVER_HANDSHAKE_FLAGS: u16 = NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES;

/// Client flag: the client speaks fixed newstyle.
pub const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flag: always set.
pub const NBD_FLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: the export is read-only.
pub const NBD_FLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: `NBD_CMD_FLUSH` is supported.
pub const NBD_FLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: `NBD_CMD_FLAG_FUA` is supported.
pub const NBD_FLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: the export behaves like a rotational medium.
pub const NBD_FLAG_ROTATIONAL: u16 = 1 << 4;
/// Transmission flag: `NBD_CMD_TRIM` is supported.
pub const NBD_FLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: `NBD_CMD_WRITE_ZEROES` and `NBD_CMD_FLAG_NO_HOLE` are supported.
pub const NBD_FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: `NBD_CMD_FLAG_DF` is supported (structured replies only).
pub const NBD_FLAG_SEND_DF: u16 = 1 << 7;
/// Transmission flag: flush and FUA are visible across all connections.
pub const NBD_FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// Transmission flag: `NBD_CMD_CACHE` is understood.
pub const NBD_FLAG_SEND_CACHE: u16 = 1 << 10;
/// Transmission flag: `NBD_CMD_FLAG_FAST_ZERO` is supported.
pub const NBD_FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

/// The transmission flags this server sends. `NBD_FLAG_CAN_MULTI_CONN` is
/// honest because [`super::Export::flush`] makes every completed write durable,
/// whichever connection made it. No fast zero: the server cannot tell cheaply
/// whether zeroing beats writing.
pub const SERVER_TRANSMISSION_FLAGS: u16 = NBD_FLAG_HAS_FLAGS
    | NBD_FLAG_SEND_FLUSH
    | NBD_FLAG_SEND_FUA
    | NBD_FLAG_SEND_TRIM
    | NBD_FLAG_SEND_WRITE_ZEROES
    | NBD_FLAG_CAN_MULTI_CONN;

/// Option: choose an export and enter transmission (cannot return errors).
pub const NBD_OPT_EXPORT_NAME: u32 = 1;
/// Option: end the session.
pub const NBD_OPT_ABORT: u32 = 2;
/// Option: list exports.
pub const NBD_OPT_LIST: u32 = 3;
/// Option: withdrawn `PEEK_EXPORT` extension.
pub const NBD_OPT_PEEK_EXPORT: u32 = 4;
/// Option: upgrade to TLS.
pub const NBD_OPT_STARTTLS: u32 = 5;
/// Option: describe an export.
pub const NBD_OPT_INFO: u32 = 6;
/// Option: describe an export and enter transmission.
pub const NBD_OPT_GO: u32 = 7;
/// Option: use structured replies.
pub const NBD_OPT_STRUCTURED_REPLY: u32 = 8;
/// Option: list metadata contexts.
pub const NBD_OPT_LIST_META_CONTEXT: u32 = 9;
/// Option: select metadata contexts.
pub const NBD_OPT_SET_META_CONTEXT: u32 = 10;
/// Option: use extended (64-bit) headers.
pub const NBD_OPT_EXTENDED_HEADERS: u32 = 11;

/// Option reply: success, no more data.
pub const NBD_REP_ACK: u32 = 1;
/// Option reply: one export of `NBD_OPT_LIST`.
pub const NBD_REP_SERVER: u32 = 2;
/// Option reply: one piece of information of `NBD_OPT_INFO`/`NBD_OPT_GO`.
pub const NBD_REP_INFO: u32 = 3;
/// Option reply: a metadata context.
pub const NBD_REP_META_CONTEXT: u32 = 4;
/// Option reply error: option unknown to this server.
pub const NBD_REP_ERR_UNSUP: u32 = 0x8000_0001;
/// Option reply error: forbidden by policy.
pub const NBD_REP_ERR_POLICY: u32 = 0x8000_0002;
/// Option reply error: syntactically or semantically invalid.
pub const NBD_REP_ERR_INVALID: u32 = 0x8000_0003;
/// Option reply error: not supported on this platform.
pub const NBD_REP_ERR_PLATFORM: u32 = 0x8000_0004;
/// Option reply error: TLS required first.
pub const NBD_REP_ERR_TLS_REQD: u32 = 0x8000_0005;
/// Option reply error: no such export.
pub const NBD_REP_ERR_UNKNOWN: u32 = 0x8000_0006;
/// Option reply error: the server is shutting down.
pub const NBD_REP_ERR_SHUTDOWN: u32 = 0x8000_0007;
/// Option reply error: the client must request block sizes.
pub const NBD_REP_ERR_BLOCK_SIZE_REQD: u32 = 0x8000_0008;
/// Option reply error: request or reply too large.
pub const NBD_REP_ERR_TOO_BIG: u32 = 0x8000_0009;

/// Information type: size and transmission flags.
pub const NBD_INFO_EXPORT: u16 = 0;
/// Information type: canonical export name.
pub const NBD_INFO_NAME: u16 = 1;
/// Information type: human-readable description.
pub const NBD_INFO_DESCRIPTION: u16 = 2;
/// Information type: block size constraints.
pub const NBD_INFO_BLOCK_SIZE: u16 = 3;

/// Command: read.
pub const NBD_CMD_READ: u16 = 0;
/// Command: write (followed by *length* bytes of payload).
pub const NBD_CMD_WRITE: u16 = 1;
/// Command: disconnect.
pub const NBD_CMD_DISC: u16 = 2;
/// Command: flush.
pub const NBD_CMD_FLUSH: u16 = 3;
/// Command: trim.
pub const NBD_CMD_TRIM: u16 = 4;
/// Command: cache hint.
pub const NBD_CMD_CACHE: u16 = 5;
/// Command: write zeroes.
pub const NBD_CMD_WRITE_ZEROES: u16 = 6;
/// Command: block status (structured replies only).
pub const NBD_CMD_BLOCK_STATUS: u16 = 7;

/// Command flag: force unit access.
pub const NBD_CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag: `NBD_CMD_WRITE_ZEROES` must not punch a hole.
pub const NBD_CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Command flag: don't fragment a structured read reply.
pub const NBD_CMD_FLAG_DF: u16 = 1 << 2;
/// Command flag: one extent per block-status context.
pub const NBD_CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Command flag: fail fast if zeroing is not faster than writing.
pub const NBD_CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
/// Command flag: extended headers' payload length.
pub const NBD_CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;

/// Length of a transmission request header.
pub const REQUEST_HEADER_LEN: usize = 28;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Length of an option request header (magic, option, length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Length of an option reply header (magic, option, type, length).
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Length of the server's greeting (`NBDMAGIC`, `IHAVEOPT`, handshake flags).
pub const GREETING_LEN: usize = 18;

/// Longest string (export name, message) the spec allows.
pub const MAX_STRING_LEN: usize = 4096;
/// Largest option payload this server reads; larger ones are discarded
/// unread and refused with `NBD_REP_ERR_TOO_BIG` (the longest legal option
/// this server understands is a 4096-byte name plus a few info requests).
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// Largest `NBD_CMD_READ`/`NBD_CMD_WRITE` length, advertised as the maximum
/// block size: 32 MiB, the largest length the spec says a client may expect
/// every server to accept.
pub const MAX_BLOCK_SIZE: u32 = 32 * 1024 * 1024;
/// The minimum block size advertised: any byte is addressable.
pub const MIN_BLOCK_SIZE: u32 = 1;

/// An NBD error value, sent in the error field of a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Errno {
    /// `NBD_EPERM` (1): operation not permitted.
    Perm,
    /// `NBD_EIO` (5): input/output error.
    Io,
    /// `NBD_ENOMEM` (12): cannot allocate memory.
    NoMem,
    /// `NBD_EINVAL` (22): invalid argument.
    Inval,
    /// `NBD_ENOSPC` (28): no space left on device.
    NoSpc,
    /// `NBD_EOVERFLOW` (75): value too large.
    Overflow,
    /// `NBD_ENOTSUP` (95): operation not supported.
    NotSup,
    /// `NBD_ESHUTDOWN` (108): server is shutting down.
    Shutdown,
}

impl Errno {
    /// The value sent on the wire.
    pub fn wire(self) -> u32 {
        match self {
            Errno::Perm => 1,
            Errno::Io => 5,
            Errno::NoMem => 12,
            Errno::Inval => 22,
            Errno::NoSpc => 28,
            Errno::Overflow => 75,
            Errno::NotSup => 95,
            Errno::Shutdown => 108,
        }
    }

    /// The error value for a failed [`super::Export`] call: the OS error if it
    /// has an NBD counterpart (`EDQUOT`, `EFBIG` become `NBD_ENOSPC`, `EACCES`
    /// and `EROFS` become `NBD_EPERM`, as the spec and qemu-nbd do), else the
    /// error kind, else `NBD_EIO`.
    pub fn from_io(err: &io::Error) -> Errno {
        if let Some(code) = err.raw_os_error() {
            match code {
                libc::EPERM | libc::EACCES | libc::EROFS => return Errno::Perm,
                libc::EIO => return Errno::Io,
                libc::ENOMEM => return Errno::NoMem,
                libc::EINVAL => return Errno::Inval,
                libc::ENOSPC | libc::EDQUOT | libc::EFBIG => return Errno::NoSpc,
                libc::EOVERFLOW => return Errno::Overflow,
                libc::ENOTSUP => return Errno::NotSup,
                libc::ESHUTDOWN => return Errno::Shutdown,
                _ => {}
            }
        }
        match err.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => Errno::Perm,
            io::ErrorKind::OutOfMemory => Errno::NoMem,
            io::ErrorKind::InvalidInput => Errno::Inval,
            io::ErrorKind::StorageFull | io::ErrorKind::FileTooLarge => Errno::NoSpc,
            io::ErrorKind::Unsupported => Errno::NotSup,
            _ => Errno::Io,
        }
    }
}

/// A message that breaks the protocol badly enough that the connection must
/// be closed (or, for options, answered with `NBD_REP_ERR_INVALID`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// A transmission request did not start with `NBD_REQUEST_MAGIC`.
    #[error("bad request magic {got:#010x} (expected {NBD_REQUEST_MAGIC:#010x}); the client is out of sync")]
    BadRequestMagic {
        /// The 32 bits received instead.
        got: u32,
    },
    /// An option request did not start with `IHAVEOPT`.
    #[error("bad option magic {got:#018x} (expected IHAVEOPT {IHAVEOPT:#018x})")]
    BadOptionMagic {
        /// The 64 bits received instead.
        got: u64,
    },
    /// The client set handshake flags the server did not offer.
    #[error("client sent unknown handshake flags {flags:#x}")]
    UnknownClientFlags {
        /// The client's flags.
        flags: u32,
    },
    /// An option the server understands was malformed.
    #[error("malformed {} option: {reason}", option_name(*option))]
    MalformedOption {
        /// The option number.
        option: u32,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A reply did not start with the magic its kind needs (client side; tests).
    #[error("bad reply magic {got:#x}")]
    BadReplyMagic {
        /// The magic received.
        got: u64,
    },
}

/// The spec name of an option, for logs and error messages.
pub fn option_name(option: u32) -> &'static str {
    match option {
        NBD_OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
        NBD_OPT_ABORT => "NBD_OPT_ABORT",
        NBD_OPT_LIST => "NBD_OPT_LIST",
        NBD_OPT_PEEK_EXPORT => "NBD_OPT_PEEK_EXPORT",
        NBD_OPT_STARTTLS => "NBD_OPT_STARTTLS",
        NBD_OPT_INFO => "NBD_OPT_INFO",
        NBD_OPT_GO => "NBD_OPT_GO",
        NBD_OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
        NBD_OPT_LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT",
        NBD_OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
        NBD_OPT_EXTENDED_HEADERS => "NBD_OPT_EXTENDED_HEADERS",
        _ => "unknown",
    }
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(v)
}

/// Length of a byte string as the u32 the wire wants. Only ever called on
/// bytes the server builds, which are far below 4 GiB.
fn wire_len(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------- handshake

/// The server's first message: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn greeting() -> [u8; GREETING_LEN] {
    let mut out = [0u8; GREETING_LEN];
    out[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..18].copy_from_slice(&SERVER_HANDSHAKE_FLAGS.to_be_bytes());
    out
}

/// The client's handshake flags, checked against what the server offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientFlags {
    /// `NBD_FLAG_C_FIXED_NEWSTYLE` was set.
    pub fixed_newstyle: bool,
    /// `NBD_FLAG_C_NO_ZEROES` was set.
    pub no_zeroes: bool,
}

/// Parse the client's 32-bit flags. Unknown bits are an error: the spec says
/// the server MUST then drop the connection.
pub fn parse_client_flags(buf: &[u8; 4]) -> Result<ClientFlags, ProtoError> {
    let flags = u32::from_be_bytes(*buf);
    if flags & !(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES) != 0 {
        return Err(ProtoError::UnknownClientFlags { flags });
    }
    Ok(ClientFlags {
        fixed_newstyle: flags & NBD_FLAG_C_FIXED_NEWSTYLE != 0,
        no_zeroes: flags & NBD_FLAG_C_NO_ZEROES != 0,
    })
}

/// The header of an option request; `length` bytes of data follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option number (`NBD_OPT_*`).
    pub option: u32,
    /// Length of the option data that follows.
    pub length: u32,
}

/// Parse an option request header (`IHAVEOPT`, option, length).
pub fn parse_option_header(buf: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, ProtoError> {
    let magic = be_u64(buf, 0);
    if magic != IHAVEOPT {
        return Err(ProtoError::BadOptionMagic { got: magic });
    }
    Ok(OptionHeader { option: be_u32(buf, 8), length: be_u32(buf, 12) })
}

/// Serialize an option request header (the client's side; tests and fuzzing).
pub fn serialize_option_header(h: &OptionHeader) -> [u8; OPTION_HEADER_LEN] {
    let mut out = [0u8; OPTION_HEADER_LEN];
    out[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[8..12].copy_from_slice(&h.option.to_be_bytes());
    out[12..16].copy_from_slice(&h.length.to_be_bytes());
    out
}

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    /// The export name (empty: the default export).
    pub name: &'a str,
    /// The information types the client asked for (`NBD_INFO_*`), as sent.
    pub requests: Vec<u16>,
}

/// An option request with its data parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionRequest<'a> {
    /// `NBD_OPT_EXPORT_NAME`: the raw name (not checked: an unusable name
    /// is an unknown export, which ends the session).
    ExportName(&'a [u8]),
    /// `NBD_OPT_ABORT` (any data is ignored, as the spec asks).
    Abort,
    /// `NBD_OPT_LIST`.
    List,
    /// `NBD_OPT_STARTTLS`.
    StartTls,
    /// `NBD_OPT_INFO`.
    Info(InfoRequest<'a>),
    /// `NBD_OPT_GO`.
    Go(InfoRequest<'a>),
    /// Any other option, known or not: this server answers `NBD_REP_ERR_UNSUP`
    /// (structured replies, metadata contexts and extended headers included).
    Unsupported(u32),
}

/// Parse an option's data. Errors are malformed options the server
/// understands; the caller answers them with `NBD_REP_ERR_INVALID`.
pub fn parse_option(option: u32, data: &[u8]) -> Result<OptionRequest<'_>, ProtoError> {
    let malformed = |reason| ProtoError::MalformedOption { option, reason };
    match option {
        NBD_OPT_EXPORT_NAME => Ok(OptionRequest::ExportName(data)),
        NBD_OPT_ABORT => Ok(OptionRequest::Abort),
        NBD_OPT_LIST if data.is_empty() => Ok(OptionRequest::List),
        NBD_OPT_LIST => Err(malformed("it takes no data")),
        NBD_OPT_STARTTLS if data.is_empty() => Ok(OptionRequest::StartTls),
        NBD_OPT_STARTTLS => Err(malformed("it takes no data")),
        NBD_OPT_INFO | NBD_OPT_GO => {
            let info = parse_info_request(data).map_err(malformed)?;
            Ok(if option == NBD_OPT_GO { OptionRequest::Go(info) } else { OptionRequest::Info(info) })
        }
        other => Ok(OptionRequest::Unsupported(other)),
    }
}

fn parse_info_request(data: &[u8]) -> Result<InfoRequest<'_>, &'static str> {
    if data.len() < 6 {
        return Err("shorter than 6 bytes");
    }
    let name_len = usize::try_from(be_u32(data, 0)).map_err(|_| "name length too large")?;
    if name_len > data.len() - 6 {
        return Err("name length exceeds the option length");
    }
    if name_len > MAX_STRING_LEN {
        return Err("export name longer than 4096 bytes");
    }
    let name = &data[4..4 + name_len];
    let count = usize::from(be_u16(data, 4 + name_len));
    let rest = &data[4 + name_len + 2..];
    if rest.len() != count * 2 {
        return Err("information request count does not match the option length");
    }
    let name = std::str::from_utf8(name).map_err(|_| "export name is not UTF-8")?;
    if name.contains('\0') {
        return Err("export name contains NUL");
    }
    let requests = rest.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
    Ok(InfoRequest { name, requests })
}

/// Serialize the data of `NBD_OPT_INFO`/`NBD_OPT_GO` (client side; tests).
pub fn serialize_info_request(name: &[u8], requests: &[u16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + name.len() + 2 * requests.len());
    out.extend_from_slice(&wire_len(name.len()).to_be_bytes());
    out.extend_from_slice(name);
    let count = u16::try_from(requests.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    for r in requests.iter().take(usize::from(count)) {
        out.extend_from_slice(&r.to_be_bytes());
    }
    out
}

/// Append one option reply (header and payload) to `out`.
pub fn put_option_reply(out: &mut Vec<u8>, option: u32, reply_type: u32, payload: &[u8]) {
    out.extend_from_slice(&NBD_OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&wire_len(payload.len()).to_be_bytes());
    out.extend_from_slice(payload);
}

/// The header of an option reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// The option this answers.
    pub option: u32,
    /// The reply type (`NBD_REP_*`).
    pub reply_type: u32,
    /// Length of the payload that follows.
    pub length: u32,
}

/// Parse an option reply header (client side; tests and fuzzing).
pub fn parse_option_reply_header(buf: &[u8; OPTION_REPLY_HEADER_LEN]) -> Result<OptionReplyHeader, ProtoError> {
    let magic = be_u64(buf, 0);
    if magic != NBD_OPTION_REPLY_MAGIC {
        return Err(ProtoError::BadReplyMagic { got: magic });
    }
    Ok(OptionReplyHeader { option: be_u32(buf, 8), reply_type: be_u32(buf, 12), length: be_u32(buf, 16) })
}

/// Payload of `NBD_REP_SERVER`: the name, then an optional description.
pub fn rep_server_payload(name: &str, description: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len() + description.len());
    out.extend_from_slice(&wire_len(name.len()).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(description.as_bytes());
    out
}

/// Payload of `NBD_REP_INFO` / `NBD_INFO_EXPORT`.
pub fn info_export_payload(size: u64, transmission_flags: u16) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[0..2].copy_from_slice(&NBD_INFO_EXPORT.to_be_bytes());
    out[2..10].copy_from_slice(&size.to_be_bytes());
    out[10..12].copy_from_slice(&transmission_flags.to_be_bytes());
    out
}

/// Payload of `NBD_REP_INFO` / `NBD_INFO_NAME` (also used for descriptions
/// with `NBD_INFO_DESCRIPTION`).
pub fn info_string_payload(info_type: u16, text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + text.len());
    out.extend_from_slice(&info_type.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out
}

/// Block size constraints advertised with `NBD_INFO_BLOCK_SIZE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSizes {
    /// Minimum block size (a power of two, at most 64 KiB).
    pub minimum: u32,
    /// Preferred block size (a power of two, at least 512 and the minimum).
    pub preferred: u32,
    /// Maximum length of a read or write.
    pub maximum: u32,
}

impl BlockSizes {
    /// This server's constraints for an export that prefers `preferred`
    /// bytes: minimum 1, preferred rounded up to a power of two and kept
    /// within 512 B..=2 MiB, maximum [`MAX_BLOCK_SIZE`].
    pub fn for_export(preferred: u32) -> BlockSizes {
        let preferred = preferred.clamp(512, 2 * 1024 * 1024).next_power_of_two();
        BlockSizes { minimum: MIN_BLOCK_SIZE, preferred, maximum: MAX_BLOCK_SIZE }
    }
}

/// Payload of `NBD_REP_INFO` / `NBD_INFO_BLOCK_SIZE`.
pub fn info_block_size_payload(sizes: &BlockSizes) -> [u8; 14] {
    let mut out = [0u8; 14];
    out[0..2].copy_from_slice(&NBD_INFO_BLOCK_SIZE.to_be_bytes());
    out[2..6].copy_from_slice(&sizes.minimum.to_be_bytes());
    out[6..10].copy_from_slice(&sizes.preferred.to_be_bytes());
    out[10..14].copy_from_slice(&sizes.maximum.to_be_bytes());
    out
}

/// The reply to a successful `NBD_OPT_EXPORT_NAME`: size, transmission flags
/// and, unless the client negotiated `NBD_FLAG_C_NO_ZEROES`, 124 zero bytes.
pub fn export_name_reply(size: u64, transmission_flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + 124);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&transmission_flags.to_be_bytes());
    if !no_zeroes {
        out.resize(out.len() + 124, 0);
    }
    out
}

// ------------------------------------------------------------- transmission

/// The command of a transmission request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `NBD_CMD_READ`.
    Read,
    /// `NBD_CMD_WRITE`.
    Write,
    /// `NBD_CMD_DISC`.
    Disc,
    /// `NBD_CMD_FLUSH`.
    Flush,
    /// `NBD_CMD_TRIM`.
    Trim,
    /// `NBD_CMD_CACHE`.
    Cache,
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes,
    /// `NBD_CMD_BLOCK_STATUS`.
    BlockStatus,
    /// Any other value.
    Unknown(u16),
}

impl From<u16> for Command {
    fn from(v: u16) -> Command {
        match v {
            NBD_CMD_READ => Command::Read,
            NBD_CMD_WRITE => Command::Write,
            NBD_CMD_DISC => Command::Disc,
            NBD_CMD_FLUSH => Command::Flush,
            NBD_CMD_TRIM => Command::Trim,
            NBD_CMD_CACHE => Command::Cache,
            NBD_CMD_WRITE_ZEROES => Command::WriteZeroes,
            NBD_CMD_BLOCK_STATUS => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }
}

impl From<Command> for u16 {
    fn from(c: Command) -> u16 {
        match c {
            Command::Read => NBD_CMD_READ,
            Command::Write => NBD_CMD_WRITE,
            Command::Disc => NBD_CMD_DISC,
            Command::Flush => NBD_CMD_FLUSH,
            Command::Trim => NBD_CMD_TRIM,
            Command::Cache => NBD_CMD_CACHE,
            Command::WriteZeroes => NBD_CMD_WRITE_ZEROES,
            Command::BlockStatus => NBD_CMD_BLOCK_STATUS,
            Command::Unknown(v) => v,
        }
    }
}

/// A transmission request header, as sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`NBD_CMD_FLAG_*`).
    pub flags: u16,
    /// The command.
    pub command: Command,
    /// The client's cookie (the spec's "handle"), echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u32,
}

impl Request {
    /// Bytes of payload that follow this header on the wire: *length* for a
    /// write, whatever its flags or range, else none.
    pub fn payload_len(&self) -> u32 {
        if self.command == Command::Write {
            self.length
        } else {
            0
        }
    }
}

/// Parse a transmission request header. Only a wrong magic is an error (the
/// stream is then out of sync); everything else is judged by [`check_request`].
pub fn parse_request_header(buf: &[u8; REQUEST_HEADER_LEN]) -> Result<Request, ProtoError> {
    let magic = be_u32(buf, 0);
    if magic != NBD_REQUEST_MAGIC {
        return Err(ProtoError::BadRequestMagic { got: magic });
    }
    Ok(Request {
        flags: be_u16(buf, 4),
        command: Command::from(be_u16(buf, 6)),
        cookie: be_u64(buf, 8),
        offset: be_u64(buf, 16),
        length: be_u32(buf, 24),
    })
}

/// Serialize a transmission request header (client side; tests and fuzzing).
pub fn serialize_request_header(r: &Request) -> [u8; REQUEST_HEADER_LEN] {
    let mut out = [0u8; REQUEST_HEADER_LEN];
    out[0..4].copy_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&r.flags.to_be_bytes());
    out[6..8].copy_from_slice(&u16::from(r.command).to_be_bytes());
    out[8..16].copy_from_slice(&r.cookie.to_be_bytes());
    out[16..24].copy_from_slice(&r.offset.to_be_bytes());
    out[24..28].copy_from_slice(&r.length.to_be_bytes());
    out
}

/// A request that passed [`check_request`]: in range, flags allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read `len` bytes at `offset`.
    Read {
        /// Byte offset.
        offset: u64,
        /// Length (at most [`MAX_BLOCK_SIZE`]).
        len: u32,
    },
    /// Write the payload at `offset`.
    Write {
        /// Byte offset.
        offset: u64,
        /// Payload length (at most [`MAX_BLOCK_SIZE`]).
        len: u32,
        /// `NBD_CMD_FLAG_FUA`.
        fua: bool,
    },
    /// Disconnect after in-flight requests.
    Disc,
    /// Flush every completed write.
    Flush,
    /// Discard a range.
    Trim {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u32,
        /// `NBD_CMD_FLAG_FUA`.
        fua: bool,
    },
    /// Zero a range.
    WriteZeroes {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u32,
        /// False when the client set `NBD_CMD_FLAG_NO_HOLE`.
        may_trim: bool,
        /// `NBD_CMD_FLAG_FUA`.
        fua: bool,
    },
}

/// Judge a request against the export's size and this server's flags, giving
/// the error value the spec names when it is refused:
///
/// - unknown commands, `NBD_CMD_CACHE` (not advertised), `NBD_CMD_BLOCK_STATUS`
///   (no metadata context can be negotiated), and flags not documented for
///   the command (including `NBD_CMD_FLAG_FAST_ZERO`, not advertised):
///   `NBD_EINVAL`. `NBD_CMD_FLAG_FUA` is accepted on every command, as the
///   spec requires once `NBD_FLAG_SEND_FUA` is advertised.
/// - reads and writes longer than [`MAX_BLOCK_SIZE`]: `NBD_EINVAL`.
/// - beyond the end (or *offset + length* overflowing): `NBD_EINVAL` for
///   read and trim, `NBD_ENOSPC` for write and write-zeroes.
///
/// Trim and write-zeroes are not held to [`MAX_BLOCK_SIZE`]: they carry no
/// payload, and qemu-nbd and nbdkit accept any length within the export too.
/// `NBD_CMD_DISC` is always accepted; the offset and length of a flush or
/// disconnect are ignored. Zero lengths are valid (the spec says not to
/// disconnect); executing them is a no-op.
pub fn check_request(r: &Request, export_size: u64) -> Result<Op, Errno> {
    let fua = r.flags & NBD_CMD_FLAG_FUA != 0;
    let allowed = match r.command {
        Command::Disc => return Ok(Op::Disc),
        Command::Read | Command::Write | Command::Flush | Command::Trim => NBD_CMD_FLAG_FUA,
        Command::WriteZeroes => NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE,
        Command::Cache | Command::BlockStatus | Command::Unknown(_) => return Err(Errno::Inval),
    };
    if r.flags & !allowed != 0 {
        return Err(Errno::Inval);
    }
    let in_range = r.offset.checked_add(u64::from(r.length)).is_some_and(|end| end <= export_size);
    let (offset, len) = (r.offset, r.length);
    match r.command {
        Command::Read if len > MAX_BLOCK_SIZE || !in_range => Err(Errno::Inval),
        Command::Read => Ok(Op::Read { offset, len }),
        Command::Write if len > MAX_BLOCK_SIZE => Err(Errno::Inval),
        Command::Write if !in_range => Err(Errno::NoSpc),
        Command::Write => Ok(Op::Write { offset, len, fua }),
        Command::Flush => Ok(Op::Flush),
        Command::Trim if !in_range => Err(Errno::Inval),
        Command::Trim => Ok(Op::Trim { offset, len, fua }),
        Command::WriteZeroes if !in_range => Err(Errno::NoSpc),
        Command::WriteZeroes => Ok(Op::WriteZeroes { offset, len, may_trim: r.flags & NBD_CMD_FLAG_NO_HOLE == 0, fua }),
        Command::Disc | Command::Cache | Command::BlockStatus | Command::Unknown(_) => Err(Errno::Inval),
    }
}

/// A simple reply header: `error` 0 for success, else an [`Errno::wire`] value.
pub fn simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut out = [0u8; SIMPLE_REPLY_LEN];
    out[0..4].copy_from_slice(&NBD_SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// A parsed simple reply header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimpleReply {
    /// The error value (0: success).
    pub error: u32,
    /// The cookie of the request it answers.
    pub cookie: u64,
}

/// Parse a simple reply header (client side; tests and fuzzing).
pub fn parse_simple_reply(buf: &[u8; SIMPLE_REPLY_LEN]) -> Result<SimpleReply, ProtoError> {
    let magic = be_u32(buf, 0);
    if magic != NBD_SIMPLE_REPLY_MAGIC {
        return Err(ProtoError::BadReplyMagic { got: u64::from(magic) });
    }
    Ok(SimpleReply { error: be_u32(buf, 4), cookie: be_u64(buf, 8) })
}

/// Run every parser on `data` the way the fuzz targets do, checking that each
/// accepted message serializes back to the same bytes. Returns how many
/// parsers accepted their input. Panics only on a real bug (a round trip that
/// does not hold), which is what the fuzzer looks for.
pub fn fuzz_request_bytes(data: &[u8]) -> usize {
    let mut accepted = 0;
    if let Some(hdr) = data.get(..REQUEST_HEADER_LEN).and_then(|b| <&[u8; REQUEST_HEADER_LEN]>::try_from(b).ok()) {
        if let Ok(req) = parse_request_header(hdr) {
            accepted += 1;
            assert_eq!(&serialize_request_header(&req), hdr, "request header round trip");
            let size = data
                .get(REQUEST_HEADER_LEN..)
                .map_or(0, |rest| rest.iter().take(8).fold(0u64, |acc, b| (acc << 8) | u64::from(*b)));
            if let Ok(op) = check_request(&req, size) {
                let (offset, len) = match op {
                    Op::Read { offset, len }
                    | Op::Write { offset, len, .. }
                    | Op::Trim { offset, len, .. }
                    | Op::WriteZeroes { offset, len, .. } => (offset, len),
                    Op::Disc | Op::Flush => (0, 0),
                };
                assert!(
                    matches!(op, Op::Disc | Op::Flush)
                        || offset.checked_add(u64::from(len)).is_some_and(|end| end <= size),
                    "accepted an out-of-range request"
                );
            }
        }
    }
    if let Some(hdr) = data.get(..SIMPLE_REPLY_LEN).and_then(|b| <&[u8; SIMPLE_REPLY_LEN]>::try_from(b).ok()) {
        if let Ok(reply) = parse_simple_reply(hdr) {
            accepted += 1;
            assert_eq!(&simple_reply(reply.error, reply.cookie), hdr, "simple reply round trip");
        }
    }
    accepted
}

/// Run the handshake parsers on `data` the way the fuzz target does: the first
/// 16 bytes as an option header (or, failing that, the first 4 bytes as
/// option number), the rest as that option's data. Returns whether the option
/// parsed. Panics only on a broken round trip.
pub fn fuzz_option_bytes(data: &[u8]) -> bool {
    if let Some(flags) = data.get(..4).and_then(|b| <&[u8; 4]>::try_from(b).ok()) {
        if let Ok(f) = parse_client_flags(flags) {
            let back = u32::from(f.fixed_newstyle) | (u32::from(f.no_zeroes) << 1);
            assert_eq!(back.to_be_bytes(), *flags, "client flags round trip");
        }
    }
    let option = match data.get(..OPTION_HEADER_LEN).and_then(|b| <&[u8; OPTION_HEADER_LEN]>::try_from(b).ok()) {
        Some(hdr) => match parse_option_header(hdr) {
            Ok(h) => {
                assert_eq!(&serialize_option_header(&h), hdr, "option header round trip");
                h.option
            }
            Err(_) => be_u32(hdr, 0) % 16,
        },
        None => return false,
    };
    let body = &data[OPTION_HEADER_LEN..];
    match parse_option(option, body) {
        Ok(OptionRequest::Info(info) | OptionRequest::Go(info)) => {
            assert_eq!(serialize_info_request(info.name.as_bytes(), &info.requests), body, "info round trip");
            true
        }
        Ok(_) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests;
