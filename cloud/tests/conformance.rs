//! The backend conformance suite (`vault::conformance`) against real
//! servers: Azurite's Blob service and moto's S3, each a process of this
//! test's own on loopback (`vm_tests::cloud_servers`), reached with the
//! settings a user would export. Also: multipart uploads, two vaults in one
//! bucket, and the protection a bucket reports.

use cloud::{BucketProtection, CloudBackend, LockMode, Settings};
use vault::conformance::{suite, Profile};
use vault::{Backend, Kind, Location, VaultError};
use vm_tests::cloud_servers::{Azurite, Moto};

fn open(vars: &[(String, String)], url: &str) -> CloudBackend {
    let at: Location = url.parse().unwrap();
    CloudBackend::open(&at, &Settings::from_vars(vars.iter().cloned())).unwrap()
}

#[test]
fn s3_conforms() {
    let moto = Moto::start();
    let b = open(&moto.vars(), "s3://lb-conformance/vaults/one");
    b.create_bucket(None).unwrap();
    suite(&b, Profile::Store);
}

/// Into a bucket with Object Lock and a default retention (an immutable
/// vault): S3 refuses an upload that does not say its checksum algorithm,
/// so every PUT carries `x-amz-sdk-checksum-algorithm`, signed. Deletes
/// there leave the locked versions (the suite sees a delete).
#[test]
fn s3_with_object_lock_conforms() {
    let moto = Moto::start();
    let b = open(&moto.vars(), "s3://lb-locked-conformance/v");
    b.create_bucket(Some((LockMode::Compliance, 1))).unwrap();
    suite(&b, Profile::Store);
}

/// CRC-64/NVME (reflected, polynomial 0xAD93D23594C93659, all ones in and
/// out), bit by bit: the checksum S3 is sent, computed apart from the
/// client's table-driven one.
fn crc64nvme(data: &[u8]) -> u64 {
    let mut crc = u64::MAX;
    for &b in data {
        crc ^= u64::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x9A6C_9329_AC4B_C9B5 } else { crc >> 1 };
        }
    }
    !crc
}

/// The checksum header moto recorded for object `key` of `bucket` (it
/// keeps what it was sent and gives it back to a GET that asks,
/// `x-amz-checksum-mode: ENABLED`), as (header, value).
fn recorded_checksum(moto: &Moto, bucket: &str, key: &str) -> (String, String) {
    use std::io::{Read as _, Write as _};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", moto.port())).unwrap();
    write!(
        c,
        "GET /{bucket}/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         x-amz-checksum-mode: ENABLED\r\nAuthorization: AWS4-HMAC-SHA256 \
         Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\n\r\n"
    )
    .unwrap();
    let mut reply = Vec::new();
    c.read_to_end(&mut reply).unwrap();
    let head = String::from_utf8_lossy(&reply[..reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap()]).to_string();
    head.lines()
        .filter_map(|l| l.split_once(": "))
        .find(|(h, _)| h.starts_with("x-amz-checksum-") && *h != "x-amz-checksum-type")
        .map(|(h, v)| (h.to_string(), v.trim().to_string()))
        .unwrap_or_else(|| panic!("{key}: no checksum recorded: {head}"))
}

fn base64(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = c.iter().enumerate().fold(0u32, |n, (i, &x)| n | u32::from(x) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= c.len() { A[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

/// Every S3 upload says its CRC64NVME (what the store checks it against,
/// the payload going unsigned), put whole or streamed.
#[test]
fn s3_uploads_carry_the_crc64nvme_of_their_bytes() {
    assert_eq!(crc64nvme(b"123456789"), 0xAE8B_1486_0A79_9888, "the check value of CRC-64/NVME");
    let moto = Moto::start();
    let b = open(&moto.vars(), "s3://lb-checksums/v");
    b.create_bucket(None).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11).to_le_bytes()[0]).collect();
    b.put(Kind::Pack, "abc123", &data).unwrap();
    let mut w = b.writer(Kind::Pack).unwrap().unwrap();
    w.write(&data[..1000]).unwrap();
    w.write(&data[1000..]).unwrap();
    w.commit("abc124").unwrap();
    for name in ["abc123", "abc124"] {
        let sent = recorded_checksum(&moto, "lb-checksums", &format!("v/packs/{name}"));
        let expected = ("x-amz-checksum-crc64nvme".to_string(), base64(&crc64nvme(&data).to_be_bytes()));
        assert_eq!(sent, expected, "{name}: the checksum sent is not the bytes' CRC64NVME");
    }
}

/// `AWS_CHECKSUM_ALGORITHM=sha256`, for a store that predates CRC64NVME:
/// uploads carry a SHA-256 instead, and still say which, so a bucket with
/// Object Lock takes them.
#[test]
fn s3_uploads_carry_a_sha256_when_the_settings_ask() {
    let moto = Moto::start();
    let mut vars = moto.vars();
    vars.push(("AWS_CHECKSUM_ALGORITHM".into(), "sha256".into()));
    let b = open(&vars, "s3://lb-sha256/v");
    b.create_bucket(Some((LockMode::Compliance, 1))).unwrap();
    b.put(Kind::Pack, "abc123", b"some pack").unwrap();
    let (header, _) = recorded_checksum(&moto, "lb-sha256", "v/packs/abc123");
    assert_eq!(header, "x-amz-checksum-sha256");
}

#[test]
fn azure_conforms() {
    let azurite = Azurite::start();
    let b = open(&azurite.vars(), "az://devstoreaccount1/lb-conformance/vaults/one");
    b.create_bucket(None).unwrap();
    suite(&b, Profile::Store);
}

/// A streamed object above the multipart threshold goes up in parts and
/// reads back whole; nothing is visible before the commit; a second commit
/// of the name leaves the first object (packs are created where absent).
fn multipart(b: CloudBackend) {
    let b = b.with_multipart_above(1 << 20);
    let data: Vec<u8> = (0..20u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0]).collect();
    let mut w = b.writer(Kind::Pack).unwrap().unwrap();
    for piece in data.chunks(4 << 20) {
        w.write(piece).unwrap();
    }
    assert_eq!(b.list(Kind::Pack, "").unwrap(), Vec::<String>::new());
    w.commit("abc123").unwrap();
    assert_eq!(b.size(Kind::Pack, "abc123").unwrap(), Some(data.len() as u64));
    assert!(b.get(Kind::Pack, "abc123").unwrap() == data, "the multipart object reads back different");
    assert_eq!(b.get_range(Kind::Pack, "abc123", 17 << 20, 5).unwrap(), &data[17 << 20..(17 << 20) + 5]);
    let mut w = b.writer(Kind::Pack).unwrap().unwrap();
    w.write(b"something else").unwrap();
    w.commit("abc123").unwrap();
    assert_eq!(b.size(Kind::Pack, "abc123").unwrap(), Some(data.len() as u64), "the existing pack was replaced");
}

#[test]
fn s3_multipart_uploads() {
    let moto = Moto::start();
    let b = open(&moto.vars(), "s3://lb-multipart");
    b.create_bucket(None).unwrap();
    multipart(b);
}

#[test]
fn azure_multipart_uploads() {
    let azurite = Azurite::start();
    let b = open(&azurite.vars(), "az://devstoreaccount1/lb-multipart");
    b.create_bucket(None).unwrap();
    multipart(b);
}

/// Two prefixes of one bucket are two vaults: neither lists, reads or
/// deletes the other's objects.
#[test]
fn vaults_under_two_prefixes_of_one_bucket_are_separate() {
    let moto = Moto::start();
    let a = open(&moto.vars(), "s3://lb-shared/site-a");
    a.create_bucket(None).unwrap();
    let b = open(&moto.vars(), "s3://lb-shared/site-a2");
    let whole = open(&moto.vars(), "s3://lb-shared");
    a.put(Kind::Root, "web/1", b"a's").unwrap();
    b.put(Kind::Root, "web/1", b"b's").unwrap();
    assert_eq!(a.get(Kind::Root, "web/1").unwrap(), b"a's");
    assert_eq!(b.get(Kind::Root, "web/1").unwrap(), b"b's");
    assert_eq!(a.list(Kind::Root, "").unwrap(), vec!["web/1".to_string()]);
    assert_eq!(whole.list(Kind::Root, "").unwrap(), Vec::<String>::new(), "the bucket's root holds no vault");
    b.delete(Kind::Root, "web/1").unwrap();
    assert_eq!(a.get(Kind::Root, "web/1").unwrap(), b"a's");
    assert_eq!(a.location(), "s3://lb-shared/site-a");
}

/// A bucket that does not exist, and credentials the store refuses, are
/// errors that name the vault; nothing is created.
#[test]
fn a_missing_bucket_and_wrong_credentials_are_named() {
    let azurite = Azurite::start();
    let b = open(&azurite.vars(), "az://devstoreaccount1/no-such-container");
    let e = b.get(Kind::Config, "config").unwrap_err();
    // A missing container reads as a missing object; opening a vault then
    // says there is no vault there (vault::Vault::open).
    assert!(matches!(e, VaultError::NotFound { .. }), "{e:?}");
    let e = b.put(Kind::Config, "config", b"x").unwrap_err().to_string();
    assert!(e.contains("az://devstoreaccount1/no-such-container") && e.contains("does not exist; create it"), "{e}");
    let s3 = Moto::start();
    let e = open(&s3.vars(), "s3://no-such-bucket/v").create(Kind::Config, "config", b"x").unwrap_err().to_string();
    assert!(e.contains("s3://no-such-bucket/v") && e.contains("does not exist; create it"), "{e}");

    let mut wrong = azurite.vars();
    wrong.retain(|(k, _)| k != "AZURE_STORAGE_ACCOUNT_KEY");
    wrong.push(("AZURE_STORAGE_ACCOUNT_KEY".into(), "d3Jvbmcga2V5IG9mIDMyIGJ5dGVzIGxvbmcgZm9yIHRoaXM=".into()));
    let ok = open(&azurite.vars(), "az://devstoreaccount1/lb-creds");
    ok.create_bucket(None).unwrap();
    let bad = open(&wrong, "az://devstoreaccount1/lb-creds");
    let e = bad.put(Kind::Lease, "l", b"x").unwrap_err();
    assert!(matches!(e, VaultError::Refused { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("az://devstoreaccount1/lb-creds") && text.contains("credentials"), "{text}");
    assert!(!text.contains("d3Jvbmcga2V5"), "the key is in the message: {text}");
    assert_eq!(ok.list(Kind::Lease, "").unwrap(), Vec::<String>::new());
}

#[test]
fn the_protection_is_what_the_bucket_has() {
    let moto = Moto::start();
    let plain = open(&moto.vars(), "s3://lb-plain");
    plain.create_bucket(None).unwrap();
    assert_eq!(plain.bucket_protection().unwrap(), BucketProtection::None);
    let locked = open(&moto.vars(), "s3://lb-locked/v");
    locked.create_bucket(Some((LockMode::Compliance, 3))).unwrap();
    assert_eq!(
        locked.bucket_protection().unwrap(),
        BucketProtection::ObjectLock { mode: LockMode::Compliance, days: 3 }
    );

    let azurite = Azurite::start();
    let c = open(&azurite.vars(), "az://devstoreaccount1/lb-plain");
    c.create_bucket(None).unwrap();
    // Azurite has no immutability policies (it ignores them): a container
    // there is never protected.
    assert_eq!(c.bucket_protection().unwrap(), BucketProtection::None);
}

/// Multipart uploads a crash left open (started, never completed) are
/// found and aborted by the sweep garbage collection runs, by the store's
/// clock; an upload outside the vault's keys is left alone.
#[test]
fn s3_uploads_a_crash_left_open_are_aborted() {
    use object_store::aws::AmazonS3Builder;
    use object_store::path::Path;
    use object_store::{ObjectStoreExt as _, PutPayload};

    let moto = Moto::start();
    let b = open(&moto.vars(), "s3://lb-uploads/v");
    b.create_bucket(None).unwrap();
    let mut raw = AmazonS3Builder::new().with_bucket_name("lb-uploads");
    for (k, v) in moto.vars() {
        if let Ok(key) = k.to_ascii_lowercase().parse() {
            raw = raw.with_config(key, v);
        }
    }
    let raw = raw.build().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (crashed, mut foreign) = rt.block_on(async {
        let mut ours = raw.put_multipart(&Path::from("v/packs/abc123")).await.unwrap();
        ours.put_part(PutPayload::from(vec![7u8; 5 << 20])).await.unwrap();
        let mut theirs = raw.put_multipart(&Path::from("elsewhere/big.iso")).await.unwrap();
        theirs.put_part(PutPayload::from(vec![8u8; 5 << 20])).await.unwrap();
        (ours, theirs)
    });
    // The vault's upload is never completed nor aborted: a crashed writer.
    std::mem::forget(crashed);
    // (Which uploads are old enough is judged by the store's clock, and
    // moto reports every upload as initiated in 2010: that rule has its
    // unit test, `backend::tests::abandoned_uploads`.)
    // Any age: the vault's one is found (a dry run keeps it), then aborted.
    let found = b.sweep_unfinished(std::time::Duration::ZERO, true).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].0.starts_with("multipart upload of v/packs/abc123"), "{found:?}");
    assert_eq!(b.sweep_unfinished(std::time::Duration::ZERO, false).unwrap().len(), 1);
    assert_eq!(b.sweep_unfinished(std::time::Duration::ZERO, true).unwrap(), vec![]);
    // The one outside the vault's keys is still open: it completes.
    rt.block_on(foreign.complete()).unwrap();
    assert_eq!(open(&moto.vars(), "s3://lb-uploads/elsewhere").size(vault::Kind::Config, "x").unwrap(), None);
}

/// An S3-compatible store from before CRC64NVME, in front of moto: it
/// answers any request carrying `x-amz-checksum-crc64nvme` as AWS answers
/// an algorithm it does not know, and passes every other request on.
struct OldStore {
    addr: std::net::SocketAddr,
    refused: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl OldStore {
    fn start(upstream: u16) -> OldStore {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = std::sync::Arc::clone(&refused);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let count = std::sync::Arc::clone(&count);
                std::thread::spawn(move || {
                    if OldStore::serve(client, upstream).unwrap_or(false) {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        OldStore { addr, refused }
    }

    /// Serves one request on `client`, then closes it; whether it refused it.
    fn serve(mut client: std::net::TcpStream, upstream: u16) -> std::io::Result<bool> {
        use std::io::{Read, Write};
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if client.read(&mut byte)? == 0 {
                return Ok(false);
            }
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let length = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
        let mut body = vec![0u8; length];
        client.read_exact(&mut body)?;
        if text.contains("x-amz-checksum-crc64nvme") {
            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InvalidRequest</Code><Message>Value \
                       for x-amz-sdk-checksum-algorithm header is invalid.</Message></Error>";
            write!(
                client,
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: \
                 close\r\n\r\n{xml}",
                xml.len()
            )?;
            return Ok(true);
        }
        // Everything else goes to moto, one connection a request.
        let kept: Vec<&str> = std::str::from_utf8(&head)
            .unwrap()
            .trim_end()
            .lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
            .collect();
        let mut up = std::net::TcpStream::connect(("127.0.0.1", upstream))?;
        write!(up, "{}\r\nConnection: close\r\n\r\n", kept.join("\r\n"))?;
        up.write_all(&body)?;
        let mut answer = Vec::new();
        up.read_to_end(&mut answer)?;
        client.write_all(&answer)?;
        Ok(false)
    }
}

/// A store that refuses CRC64NVME checksums (a careless admin's old MinIO
/// or Ceph): the failed upload says so and names the setting that fixes it,
/// and with that setting the same store takes the upload.
#[test]
fn a_store_that_refuses_crc64nvme_names_the_setting_that_fixes_it() {
    let moto = Moto::start();
    open(&moto.vars(), "s3://lb-old-store/v").create_bucket(None).unwrap();
    let old = OldStore::start(moto.port());
    let mut vars: Vec<(String, String)> = moto.vars().into_iter().filter(|(k, _)| k != "AWS_ENDPOINT_URL").collect();
    vars.push(("AWS_ENDPOINT_URL".into(), format!("http://{}", old.addr)));
    let b = open(&vars, "s3://lb-old-store/v");
    let e = b.put(Kind::Pack, "abc123", b"some pack").unwrap_err().to_string();
    assert!(e.contains("s3://lb-old-store/v") && e.contains("AWS_CHECKSUM_ALGORITHM=sha256"), "{e}");
    let mut w = b.writer(Kind::Pack).unwrap().unwrap();
    w.write(b"a streamed pack").unwrap();
    let e = w.commit("abc124").unwrap_err().to_string();
    assert!(e.contains("AWS_CHECKSUM_ALGORITHM=sha256"), "{e}");
    assert_eq!(old.refused.load(std::sync::atomic::Ordering::SeqCst), 2, "both uploads reached the old store");

    vars.push(("AWS_CHECKSUM_ALGORITHM".into(), "sha256".into()));
    let b = open(&vars, "s3://lb-old-store/v");
    b.put(Kind::Pack, "abc123", b"some pack").unwrap();
    assert_eq!(b.get(Kind::Pack, "abc123").unwrap(), b"some pack");
    assert_eq!(old.refused.load(std::sync::atomic::Ordering::SeqCst), 2);
}
