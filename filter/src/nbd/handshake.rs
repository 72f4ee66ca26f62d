//! The fixed-newstyle handshake: greeting, client flags, then options until
//! the client enters transmission (`NBD_OPT_GO`, `NBD_OPT_EXPORT_NAME`) or
//! leaves (`NBD_OPT_ABORT`, EOF).
//!
//! Options this server answers: `NBD_OPT_EXPORT_NAME`, `NBD_OPT_ABORT`,
//! `NBD_OPT_LIST`, `NBD_OPT_INFO`, `NBD_OPT_GO`, `NBD_OPT_STARTTLS`; every
//! other option (structured replies, metadata contexts, extended headers,
//! unknown) gets `NBD_REP_ERR_UNSUP`, so transmission uses simple replies only.
//!
//! TLS ([`Tls`]), as the spec's "TLS support" section and qemu-nbd with
//! `tls-creds` do it:
//! - [`Tls::Unavailable`] (no credentials, or a unix socket): STARTTLS gets
//!   `NBD_REP_ERR_POLICY` and the session goes on in plaintext.
//! - [`Tls::Required`] (the spec's FORCEDTLS mode): before STARTTLS, every
//!   option but STARTTLS and ABORT gets `NBD_REP_ERR_TLS_REQD`, and
//!   `NBD_OPT_EXPORT_NAME` (which cannot be answered with an error) ends the
//!   session; nothing of the export, not even its name or size, is told. STARTTLS
//!   is acknowledged and [`negotiate`] returns [`Outcome::StartTls`]: the
//!   caller runs the TLS handshake (this module knows nothing of
//!   encryption; see [`super::TlsUpgrade`]) and then goes on with
//!   [`options`] over the encrypted stream in [`Tls::Active`].
//! - [`Tls::Active`]: options are answered as without TLS, except that a
//!   second STARTTLS gets `NBD_REP_ERR_INVALID`. There is no way back to
//!   plaintext.

use std::io::{self, Read, Write};

use super::proto::{self, OptionRequest};
use super::Export;

/// Everything the handshake needs to know about what is served.
pub(crate) struct ExportSpec<'a> {
    /// The export's name; the empty (default) name also selects it.
    pub name: &'a str,
    /// The export.
    pub export: &'a dyn Export,
    /// True once the server is shutting down: options are then refused with
    /// `NBD_REP_ERR_SHUTDOWN`.
    pub shutting_down: &'a dyn Fn() -> bool,
}

impl ExportSpec<'_> {
    fn matches(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }
}

/// Where the connection stands with TLS (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tls {
    /// The server has no TLS: STARTTLS is refused with `NBD_REP_ERR_POLICY`.
    Unavailable,
    /// TLS must be started before anything else.
    Required,
    /// The stream is already encrypted.
    Active,
}

/// How the handshake ended, when it ended well.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// STARTTLS was acknowledged: the caller runs the TLS handshake on the
    /// socket, then calls [`options`] with these flags over the encrypted
    /// stream. Nothing the client sent after the option may be used.
    StartTls(proto::ClientFlags),
    /// Enter transmission; `size` is the export size advertised to the client.
    Transmission {
        /// The advertised size.
        size: u64,
    },
    /// The client sent `NBD_OPT_ABORT`.
    Aborted,
}

fn protocol_error(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Run the server side of the handshake. Errors are I/O errors or protocol
/// violations that end the session (`io::ErrorKind::InvalidData`); option
/// errors the client can recover from are answered and the loop goes on.
pub(crate) fn negotiate<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    spec: &ExportSpec<'_>,
    tls: Tls,
) -> io::Result<Outcome> {
    w.write_all(&proto::greeting())?;
    let mut flags = [0u8; 4];
    r.read_exact(&mut flags)?;
    let client = proto::parse_client_flags(&flags).map_err(|e| protocol_error(e.to_string()))?;
    options(r, w, spec, client, tls)
}

/// The option haggling, after the greeting (or after STARTTLS, over the
/// encrypted stream with [`Tls::Active`]).
pub(crate) fn options<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    spec: &ExportSpec<'_>,
    client: proto::ClientFlags,
    tls: Tls,
) -> io::Result<Outcome> {
    let mut data = Vec::new();
    let mut out = Vec::new();
    loop {
        let mut hdr = [0u8; proto::OPTION_HEADER_LEN];
        r.read_exact(&mut hdr)?;
        let header = proto::parse_option_header(&hdr).map_err(|e| protocol_error(e.to_string()))?;
        let option = header.option;
        out.clear();

        if option == proto::NBD_OPT_ABORT {
            // Data, if any, is ignored (the spec says so); the client may have
            // closed already, so a failed ACK is not an error.
            proto::put_option_reply(&mut out, option, proto::NBD_REP_ACK, &[]);
            let _ = w.write_all(&out);
            return Ok(Outcome::Aborted);
        }
        if header.length > proto::MAX_OPTION_LEN {
            if option == proto::NBD_OPT_EXPORT_NAME {
                return Err(protocol_error(format!(
                    "NBD_OPT_EXPORT_NAME with a {}-byte name (longer than any export name)",
                    header.length
                )));
            }
            discard(r, u64::from(header.length))?;
            let reply = match proto::parse_option(option, &[]) {
                Ok(OptionRequest::Unsupported(_)) => proto::NBD_REP_ERR_UNSUP,
                _ => proto::NBD_REP_ERR_TOO_BIG,
            };
            let msg = format!("option data of {} bytes is too large", header.length);
            proto::put_option_reply(&mut out, option, reply, msg.as_bytes());
            w.write_all(&out)?;
            continue;
        }
        let len = usize::try_from(header.length).map_err(|_| protocol_error("option too long"))?;
        data.resize(len, 0);
        r.read_exact(&mut data)?;

        if (spec.shutting_down)() {
            if option == proto::NBD_OPT_EXPORT_NAME {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "server is shutting down"));
            }
            proto::put_option_reply(&mut out, option, proto::NBD_REP_ERR_SHUTDOWN, b"server is shutting down");
            w.write_all(&out)?;
            continue;
        }

        if tls == Tls::Required && option != proto::NBD_OPT_STARTTLS {
            if option == proto::NBD_OPT_EXPORT_NAME {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the client asked for the export (NBD_OPT_EXPORT_NAME) without TLS, which this listener requires",
                ));
            }
            let msg = format!("{} needs TLS first: this server requires NBD_OPT_STARTTLS", proto::option_name(option));
            proto::put_option_reply(&mut out, option, proto::NBD_REP_ERR_TLS_REQD, msg.as_bytes());
            w.write_all(&out)?;
            continue;
        }

        let request = match proto::parse_option(option, &data) {
            Ok(request) => request,
            Err(e) => {
                proto::put_option_reply(&mut out, option, proto::NBD_REP_ERR_INVALID, e.to_string().as_bytes());
                w.write_all(&out)?;
                continue;
            }
        };
        match request {
            OptionRequest::ExportName(name) => {
                if !spec.matches(name) {
                    return Err(protocol_error(format!(
                        "NBD_OPT_EXPORT_NAME for unknown export {:?} (this server exports {:?})",
                        clip(&String::from_utf8_lossy(name)),
                        spec.name
                    )));
                }
                let size = spec.export.size();
                w.write_all(&proto::export_name_reply(size, proto::SERVER_TRANSMISSION_FLAGS, client.no_zeroes))?;
                return Ok(Outcome::Transmission { size });
            }
            OptionRequest::Abort => {
                proto::put_option_reply(&mut out, option, proto::NBD_REP_ACK, &[]);
                let _ = w.write_all(&out);
                return Ok(Outcome::Aborted);
            }
            OptionRequest::List => {
                proto::put_option_reply(
                    &mut out,
                    option,
                    proto::NBD_REP_SERVER,
                    &proto::rep_server_payload(spec.name, ""),
                );
                proto::put_option_reply(&mut out, option, proto::NBD_REP_ACK, &[]);
            }
            OptionRequest::StartTls => match tls {
                Tls::Unavailable => proto::put_option_reply(
                    &mut out,
                    option,
                    proto::NBD_REP_ERR_POLICY,
                    b"TLS is not offered here (the server has no --tls-creds, or this is a unix socket)",
                ),
                Tls::Active => proto::put_option_reply(
                    &mut out,
                    option,
                    proto::NBD_REP_ERR_INVALID,
                    b"TLS is already active on this connection",
                ),
                Tls::Required => {
                    proto::put_option_reply(&mut out, option, proto::NBD_REP_ACK, &[]);
                    w.write_all(&out)?;
                    return Ok(Outcome::StartTls(client));
                }
            },
            OptionRequest::Info(ref info) | OptionRequest::Go(ref info) => {
                if !spec.matches(info.name.as_bytes()) {
                    let msg = format!("unknown export {:?}; this server exports {:?}", clip(info.name), spec.name);
                    proto::put_option_reply(&mut out, option, proto::NBD_REP_ERR_UNKNOWN, msg.as_bytes());
                } else {
                    let size = spec.export.size();
                    let sizes = proto::BlockSizes::for_export(spec.export.preferred_block_size());
                    let export_info = proto::info_export_payload(size, proto::SERVER_TRANSMISSION_FLAGS);
                    proto::put_option_reply(&mut out, option, proto::NBD_REP_INFO, &export_info);
                    // Sent whether asked or not, as qemu-nbd does: the
                    // constraints are the spec's defaults or looser.
                    let block_size = proto::info_block_size_payload(&sizes);
                    proto::put_option_reply(&mut out, option, proto::NBD_REP_INFO, &block_size);
                    if info.requests.contains(&proto::NBD_INFO_NAME) {
                        let name = proto::info_string_payload(proto::NBD_INFO_NAME, spec.name);
                        proto::put_option_reply(&mut out, option, proto::NBD_REP_INFO, &name);
                    }
                    proto::put_option_reply(&mut out, option, proto::NBD_REP_ACK, &[]);
                    if matches!(request, OptionRequest::Go(_)) {
                        w.write_all(&out)?;
                        return Ok(Outcome::Transmission { size });
                    }
                }
            }
            OptionRequest::Unsupported(opt) => {
                let msg = format!("{} ({opt}) is not supported by this server", proto::option_name(opt));
                proto::put_option_reply(&mut out, option, proto::NBD_REP_ERR_UNSUP, msg.as_bytes());
            }
        }
        w.write_all(&out)?;
    }
}

/// At most the first 256 bytes of a client-supplied string, so that messages
/// quoting it stay well within the spec's 4096-byte limit for strings.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(256);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Read and drop `len` bytes.
fn discard<R: Read>(r: &mut R, len: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.by_ref().take(len), &mut io::sink())?;
    if copied < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}
