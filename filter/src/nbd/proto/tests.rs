//! Unit tests of the wire format: layouts, round trips, malformed input.
use super::*;

fn req(command: Command, flags: u16, offset: u64, length: u32) -> Request {
    Request { flags, command, cookie: 0x0102_0304_0506_0708, offset, length }
}

#[test]
fn request_header_round_trip_and_layout() {
    let r = Request {
        flags: NBD_CMD_FLAG_FUA,
        command: Command::Write,
        cookie: 0xdead_beef_cafe_f00d,
        offset: 1 << 40,
        length: 4096,
    };
    let bytes = serialize_request_header(&r);
    assert_eq!(&bytes[0..4], &[0x25, 0x60, 0x95, 0x13]);
    assert_eq!(&bytes[4..8], &[0, 1, 0, 1]);
    assert_eq!(&bytes[24..28], &[0, 0, 0x10, 0]);
    assert_eq!(parse_request_header(&bytes), Ok(r));
    assert_eq!(r.payload_len(), 4096);
    assert_eq!(Request { command: Command::Read, ..r }.payload_len(), 0);
    for v in 0..=20u16 {
        assert_eq!(u16::from(Command::from(v)), v);
    }
}

#[test]
fn bad_request_magic_is_an_error() {
    let mut bytes = serialize_request_header(&req(Command::Read, 0, 0, 1));
    bytes[3] ^= 1;
    assert_eq!(parse_request_header(&bytes), Err(ProtoError::BadRequestMagic { got: 0x2560_9512 }));
    assert_eq!(parse_request_header(&[0; 28]), Err(ProtoError::BadRequestMagic { got: 0 }));
}

#[test]
fn check_request_ranges_follow_the_spec() {
    let size = 1 << 20;
    assert_eq!(
        check_request(&req(Command::Read, 0, size - 512, 512), size),
        Ok(Op::Read { offset: size - 512, len: 512 })
    );
    assert_eq!(check_request(&req(Command::Read, 0, size - 511, 512), size), Err(Errno::Inval));
    assert_eq!(check_request(&req(Command::Write, 0, size - 511, 512), size), Err(Errno::NoSpc));
    assert_eq!(check_request(&req(Command::Trim, 0, size, 1), size), Err(Errno::Inval));
    assert_eq!(check_request(&req(Command::WriteZeroes, 0, size, 1), size), Err(Errno::NoSpc));
    // offset + length overflows u64
    assert_eq!(check_request(&req(Command::Read, 0, u64::MAX, 2), size), Err(Errno::Inval));
    assert_eq!(check_request(&req(Command::Write, 0, u64::MAX, 2), u64::MAX), Err(Errno::NoSpc));
    // zero length at the very end is fine, past it is not
    assert_eq!(check_request(&req(Command::Read, 0, size, 0), size), Ok(Op::Read { offset: size, len: 0 }));
    assert_eq!(check_request(&req(Command::Read, 0, size + 1, 0), size), Err(Errno::Inval));
    // too long for one request
    let big = 1 << 30;
    assert_eq!(check_request(&req(Command::Read, 0, 0, MAX_BLOCK_SIZE + 1), big), Err(Errno::Inval));
    assert_eq!(check_request(&req(Command::Write, 0, 0, MAX_BLOCK_SIZE + 1), big), Err(Errno::Inval));
    assert!(check_request(&req(Command::Write, 0, 0, MAX_BLOCK_SIZE), big).is_ok());
    assert!(check_request(&req(Command::WriteZeroes, 0, 0, MAX_BLOCK_SIZE + 1), big).is_ok());
    // flush and disc ignore offset and length
    assert_eq!(check_request(&req(Command::Flush, 0, u64::MAX, u32::MAX), 0), Ok(Op::Flush));
    assert_eq!(check_request(&req(Command::Disc, 0xffff, 7, 7), 0), Ok(Op::Disc));
}

#[test]
fn check_request_flags_and_commands() {
    let size = 1 << 20;
    assert_eq!(
        check_request(&req(Command::WriteZeroes, NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FUA, 0, 10), size),
        Ok(Op::WriteZeroes { offset: 0, len: 10, may_trim: false, fua: true })
    );
    assert_eq!(
        check_request(&req(Command::WriteZeroes, 0, 0, 10), size),
        Ok(Op::WriteZeroes { offset: 0, len: 10, may_trim: true, fua: false })
    );
    assert_eq!(check_request(&req(Command::WriteZeroes, NBD_CMD_FLAG_FAST_ZERO, 0, 10), size), Err(Errno::Inval));
    assert_eq!(check_request(&req(Command::Write, NBD_CMD_FLAG_NO_HOLE, 0, 10), size), Err(Errno::Inval));
    assert_eq!(check_request(&req(Command::Read, NBD_CMD_FLAG_DF, 0, 10), size), Err(Errno::Inval));
    assert_eq!(check_request(&req(Command::Read, NBD_CMD_FLAG_FUA, 0, 10), size), Ok(Op::Read { offset: 0, len: 10 }));
    assert_eq!(check_request(&req(Command::Flush, NBD_CMD_FLAG_FUA, 0, 0), size), Ok(Op::Flush));
    assert_eq!(
        check_request(&req(Command::Trim, NBD_CMD_FLAG_FUA, 0, 10), size),
        Ok(Op::Trim { offset: 0, len: 10, fua: true })
    );
    assert_eq!(check_request(&req(Command::Cache, 0, 0, 10), size), Err(Errno::Inval));
    assert_eq!(check_request(&req(Command::BlockStatus, 0, 0, 10), size), Err(Errno::Inval));
    assert_eq!(check_request(&req(Command::Unknown(99), 0, 0, 10), size), Err(Errno::Inval));
}

#[test]
fn simple_reply_round_trip() {
    let bytes = simple_reply(Errno::NoSpc.wire(), 42);
    assert_eq!(&bytes[0..4], &[0x67, 0x44, 0x66, 0x98]);
    assert_eq!(parse_simple_reply(&bytes), Ok(SimpleReply { error: 28, cookie: 42 }));
    let mut bad = bytes;
    bad[0] = 0;
    assert!(matches!(parse_simple_reply(&bad), Err(ProtoError::BadReplyMagic { .. })));
}

#[test]
fn greeting_and_client_flags() {
    let g = greeting();
    assert_eq!(&g[0..8], b"NBDMAGIC");
    assert_eq!(&g[8..16], b"IHAVEOPT");
    assert_eq!(&g[16..18], &[0, 3]);
    assert_eq!(parse_client_flags(&[0, 0, 0, 3]), Ok(ClientFlags { fixed_newstyle: true, no_zeroes: true }));
    assert_eq!(parse_client_flags(&[0, 0, 0, 0]), Ok(ClientFlags { fixed_newstyle: false, no_zeroes: false }));
    assert_eq!(parse_client_flags(&[0, 0, 0, 4]), Err(ProtoError::UnknownClientFlags { flags: 4 }));
    assert_eq!(parse_client_flags(&[0x80, 0, 0, 1]), Err(ProtoError::UnknownClientFlags { flags: 0x8000_0001 }));
}

#[test]
fn option_header_round_trip() {
    let h = OptionHeader { option: NBD_OPT_GO, length: 77 };
    let bytes = serialize_option_header(&h);
    assert_eq!(&bytes[0..8], b"IHAVEOPT");
    assert_eq!(parse_option_header(&bytes), Ok(h));
    let mut bad = bytes;
    bad[7] = b'X';
    assert!(matches!(parse_option_header(&bad), Err(ProtoError::BadOptionMagic { .. })));
}

#[test]
fn info_request_round_trip() {
    let data = serialize_info_request(b"disk0", &[NBD_INFO_BLOCK_SIZE, NBD_INFO_NAME]);
    let parsed = parse_option(NBD_OPT_GO, &data).unwrap();
    assert_eq!(parsed, OptionRequest::Go(InfoRequest { name: "disk0", requests: vec![3, 1] }));
    let empty = serialize_info_request(b"", &[]);
    let parsed = parse_option(NBD_OPT_INFO, &empty).unwrap();
    assert_eq!(parsed, OptionRequest::Info(InfoRequest { name: "", requests: vec![] }));
}

#[test]
fn malformed_info_requests_are_invalid() {
    let invalid = |data: &[u8]| {
        matches!(parse_option(NBD_OPT_GO, data), Err(ProtoError::MalformedOption { option: NBD_OPT_GO, .. }))
    };
    assert!(invalid(&[]));
    assert!(invalid(&[0, 0, 0, 0, 0]));
    // name length points past the end
    assert!(invalid(&[0, 0, 0, 1, 0, 0]));
    assert!(invalid(&[0xff, 0xff, 0xff, 0xff, 0, 0]));
    // count says 1 request, none present; count says 0, one present
    assert!(invalid(&[0, 0, 0, 0, 0, 1]));
    assert!(invalid(&[0, 0, 0, 0, 0, 0, 0, 3]));
    // odd trailing byte
    assert!(invalid(&[0, 0, 0, 0, 0, 1, 0, 3, 9]));
    // not UTF-8, NUL inside, too long
    assert!(invalid(&serialize_info_request(&[0xff], &[])));
    assert!(invalid(&serialize_info_request(b"a\0b", &[])));
    assert!(invalid(&serialize_info_request(&[b'a'; 4097], &[])));
    assert!(!invalid(&serialize_info_request(&[b'a'; 4096], &[])));
}

#[test]
fn other_options() {
    assert_eq!(parse_option(NBD_OPT_LIST, &[]), Ok(OptionRequest::List));
    assert!(matches!(parse_option(NBD_OPT_LIST, &[1]), Err(ProtoError::MalformedOption { .. })));
    assert_eq!(parse_option(NBD_OPT_STARTTLS, &[]), Ok(OptionRequest::StartTls));
    assert!(parse_option(NBD_OPT_STARTTLS, &[0]).is_err());
    assert_eq!(parse_option(NBD_OPT_ABORT, b"ignored"), Ok(OptionRequest::Abort));
    assert_eq!(parse_option(NBD_OPT_EXPORT_NAME, b"x"), Ok(OptionRequest::ExportName(b"x")));
    for opt in [
        NBD_OPT_STRUCTURED_REPLY,
        NBD_OPT_LIST_META_CONTEXT,
        NBD_OPT_SET_META_CONTEXT,
        NBD_OPT_EXTENDED_HEADERS,
        0,
        4,
        12,
        u32::MAX,
    ] {
        assert_eq!(parse_option(opt, b"whatever"), Ok(OptionRequest::Unsupported(opt)));
    }
}

#[test]
fn option_replies_serialize_as_the_spec_says() {
    let mut out = Vec::new();
    put_option_reply(&mut out, NBD_OPT_GO, NBD_REP_INFO, &info_export_payload(1 << 30, SERVER_TRANSMISSION_FLAGS));
    assert_eq!(out.len(), 20 + 12);
    let hdr = parse_option_reply_header(out[..20].try_into().unwrap()).unwrap();
    assert_eq!(hdr, OptionReplyHeader { option: NBD_OPT_GO, reply_type: NBD_REP_INFO, length: 12 });
    assert_eq!(&out[20..22], &[0, 0]);
    assert_eq!(&out[22..30], &(1u64 << 30).to_be_bytes());
    assert_eq!(&out[30..32], &SERVER_TRANSMISSION_FLAGS.to_be_bytes());
    assert_eq!(SERVER_TRANSMISSION_FLAGS, 0b1_0110_1101);

    let bs = info_block_size_payload(&BlockSizes { minimum: 1, preferred: 4096, maximum: MAX_BLOCK_SIZE });
    assert_eq!(bs, [0, 3, 0, 0, 0, 1, 0, 0, 0x10, 0, 0x02, 0, 0, 0]);
    assert_eq!(rep_server_payload("ab", "d"), vec![0, 0, 0, 2, b'a', b'b', b'd']);
    assert_eq!(info_string_payload(NBD_INFO_NAME, "n"), vec![0, 1, b'n']);
    assert_eq!(export_name_reply(5, 1, true), vec![0, 0, 0, 0, 0, 0, 0, 5, 0, 1]);
    assert_eq!(export_name_reply(5, 1, false).len(), 134);
    let mut bad = [0u8; 20];
    bad[..8].copy_from_slice(b"IHAVEOPT");
    assert!(parse_option_reply_header(&bad).is_err());
}

#[test]
fn block_sizes_are_sane() {
    assert_eq!(BlockSizes::for_export(4096), BlockSizes { minimum: 1, preferred: 4096, maximum: MAX_BLOCK_SIZE });
    assert_eq!(BlockSizes::for_export(0).preferred, 512);
    assert_eq!(BlockSizes::for_export(3000).preferred, 4096);
    assert_eq!(BlockSizes::for_export(u32::MAX).preferred, 2 * 1024 * 1024);
}

#[test]
fn io_errors_map_to_nbd_errors() {
    let os = |c| Errno::from_io(&io::Error::from_raw_os_error(c));
    assert_eq!(os(libc::EIO), Errno::Io);
    assert_eq!(os(libc::ENOSPC), Errno::NoSpc);
    assert_eq!(os(libc::EDQUOT), Errno::NoSpc);
    assert_eq!(os(libc::EFBIG), Errno::NoSpc);
    assert_eq!(os(libc::EROFS), Errno::Perm);
    assert_eq!(os(libc::EPERM), Errno::Perm);
    assert_eq!(os(libc::EINVAL), Errno::Inval);
    assert_eq!(os(libc::ENOMEM), Errno::NoMem);
    assert_eq!(os(libc::EOVERFLOW), Errno::Overflow);
    assert_eq!(os(libc::EOPNOTSUPP), Errno::NotSup);
    assert_eq!(os(libc::ESHUTDOWN), Errno::Shutdown);
    assert_eq!(os(libc::EBADF), Errno::Io);
    assert_eq!(Errno::from_io(&io::Error::other("x")), Errno::Io);
    assert_eq!(Errno::from_io(&io::Error::from(io::ErrorKind::InvalidInput)), Errno::Inval);
    assert_eq!(Errno::from_io(&io::Error::from(io::ErrorKind::PermissionDenied)), Errno::Perm);
    let wires: Vec<u32> = [
        Errno::Perm,
        Errno::Io,
        Errno::NoMem,
        Errno::Inval,
        Errno::NoSpc,
        Errno::Overflow,
        Errno::NotSup,
        Errno::Shutdown,
    ]
    .iter()
    .map(|e| e.wire())
    .collect();
    assert_eq!(wires, [1, 5, 12, 22, 28, 75, 95, 108]);
}

/// The fuzz targets' logic over a few thousand deterministic pseudo-random
/// inputs, biased towards valid magics so the deeper parsers are reached.
#[test]
fn fuzz_harnesses_on_pseudo_random_input() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut requests, mut options) = (0, 0);
    for i in 0..5000 {
        let len = usize::try_from(next() % 64).unwrap();
        let mut data: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
        if i % 2 == 0 && data.len() >= 4 {
            data[..4].copy_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
            if data.len() >= 8 {
                data[6] = 0;
                data[7] %= 9;
                data[4] = 0;
                data[5] %= 4;
            }
        }
        requests += fuzz_request_bytes(&data);
        let mut opt: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
        if i % 2 == 0 && opt.len() >= 16 {
            opt[..8].copy_from_slice(b"IHAVEOPT");
            opt[8..12].copy_from_slice(&(u32::try_from(next() % 12).unwrap()).to_be_bytes());
            if i % 4 == 0 {
                let body = serialize_info_request(&opt[16..16 + (len - 16) % 5], &[3, 1]);
                opt.truncate(16);
                opt.extend_from_slice(&body);
                opt[8..12].copy_from_slice(&NBD_OPT_GO.to_be_bytes());
            }
        }
        options += usize::from(fuzz_option_bytes(&opt));
    }
    assert!(requests > 1000, "only {requests} request inputs parsed");
    assert!(options > 1000, "only {options} option inputs parsed");
}
