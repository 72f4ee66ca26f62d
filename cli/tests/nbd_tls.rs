//! NBD over TLS (issue 12, hole 7): `--tls-creds DIR` in QEMU's
//! tls-creds-x509 layout, through the real binary, real certificates (made
//! with the `openssl` command, as an administrator would) and the real
//! clients, QEMU's (`qemu-io` with `tls-creds-x509`) and libnbd's (`nbds://`).
//!
//! * QEMU writes and reads back through a TLS listener; the write is in the
//!   dirty map, and nbdcopy reads it back over TLS.
//! * A plaintext client gets `NBD_REP_ERR_TLS_REQD` and never reaches the
//!   export; a client without a certificate, or with one from another CA, is
//!   refused during the TLS handshake, and the server says who and why.
//! * A client that sends STARTTLS and then stalls is dropped at the handshake
//!   timeout.
//! * `protect --listen tcp:0.0.0.0:PORT --tls-creds DIR` needs no
//!   `--insecure-tcp`; the agent serves there over TLS without the insecure
//!   warning. A group-readable key, a server certificate from another CA or
//!   an expired one are refused, naming the file.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use vm_tests::lifeboat::{Filter, Scratch};
use vm_tests::paths::tool;
use vm_tests::pseudo_random;
use vm_tests::replicate::arg;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

fn scratch() -> Scratch {
    Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-tls-")
}

/// A scratch home with disk `name` protected on a fresh 4 MiB image.
fn protected(s: &Scratch, name: &str) -> PathBuf {
    let image = s.path(&format!("{name}.img"));
    fs::write(&image, pseudo_random(4 * MIB, 7)).unwrap();
    s.home.protect(name, &image, 64 * 1024);
    image
}

fn openssl(args: &[&str]) {
    let out = Command::new(tool("openssl")).args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA (key and certificate) in `dir`.
fn make_ca(dir: &Path, cn: &str) {
    fs::create_dir_all(dir).unwrap();
    let (key, cert) = (dir.join("ca-key.pem"), dir.join("ca-cert.pem"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        arg(&key),
        "-out",
        arg(&cert),
        "-days",
        "30",
        "-subj",
        &format!("/CN={cn}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
}

/// `out/ROLE-cert.pem` and `out/ROLE-key.pem` (mode 0600) signed by the CA in
/// `ca`, valid for 127.0.0.1 and localhost, for `days` days (negative: expired).
fn make_leaf(ca: &Path, out: &Path, role: &str, days: i32) {
    fs::create_dir_all(out).unwrap();
    let key = out.join(format!("{role}-key.pem"));
    let csr = out.join(format!("{role}.csr"));
    let ext = out.join(format!("{role}.ext"));
    let cert = out.join(format!("{role}-cert.pem"));
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        arg(&key),
        "-out",
        arg(&csr),
        "-subj",
        &format!("/CN=lifeboat test {role}"),
    ]);
    let purpose = if role == "server" { "serverAuth" } else { "clientAuth" };
    fs::write(
        &ext,
        format!(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={purpose}\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n"
        ),
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        arg(&csr),
        "-CA",
        arg(&ca.join("ca-cert.pem")),
        "-CAkey",
        arg(&ca.join("ca-key.pem")),
        "-CAcreateserial",
        "-out",
        arg(&cert),
        "-days",
        &days.to_string(),
        "-extfile",
        arg(&ext),
    ]);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(csr).unwrap();
    fs::remove_file(ext).unwrap();
}

/// The credentials directories of a test, each in QEMU's layout.
struct Pki {
    /// The server's: ca-cert.pem, server-cert.pem, server-key.pem.
    server: PathBuf,
    /// A good client's: ca-cert.pem, client-cert.pem, client-key.pem.
    client: PathBuf,
    /// A client with only ca-cert.pem: it presents no certificate.
    anonymous: PathBuf,
    /// A client whose certificate another CA signed (its ca-cert.pem holds
    /// both CAs, so that QEMU accepts its own certificate and the server's).
    stranger: PathBuf,
    /// Another CA (key and certificate).
    other_ca: PathBuf,
}

fn pki(s: &Scratch) -> Pki {
    let ca = s.path("ca");
    let other_ca = s.path("other-ca");
    make_ca(&ca, "lifeboat test CA");
    make_ca(&other_ca, "another CA");
    let p = Pki {
        server: s.path("server"),
        client: s.path("client"),
        anonymous: s.path("anonymous"),
        stranger: s.path("stranger"),
        other_ca,
    };
    make_leaf(&ca, &p.server, "server", 30);
    make_leaf(&ca, &p.client, "client", 30);
    make_leaf(&p.other_ca, &p.stranger, "client", 30);
    let ca_cert = fs::read(ca.join("ca-cert.pem")).unwrap();
    for dir in [&p.server, &p.client, &p.anonymous] {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("ca-cert.pem"), &ca_cert).unwrap();
    }
    let mut both = fs::read(p.other_ca.join("ca-cert.pem")).unwrap();
    both.extend_from_slice(&ca_cert);
    fs::write(p.stranger.join("ca-cert.pem"), both).unwrap();
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `lifeboat filter NAME --listen LISTEN --tls-creds DIR EXTRA...`, waited for.
fn tls_filter(s: &Scratch, name: &str, listen: &str, creds: &Path, extra: &[&str]) -> Filter {
    let mut args = vec!["filter", name, "--listen", listen, "--tls-creds", arg(creds)];
    args.extend_from_slice(extra);
    let mut f = s.home.spawn_with(&args, |_| {});
    f.wait_line(&format!("filter {name} listening on"), Duration::from_secs(30));
    f
}

/// qemu-io on the NBD export at 127.0.0.1:PORT, with QEMU's TLS client
/// credentials in `creds` (none: plaintext).
fn qemu_io_tls(port: u16, creds: Option<&Path>, cmds: &[&str]) -> Output {
    let mut cmd = Command::new(tool("qemu-io"));
    let mut opts = format!("driver=raw,file.driver=nbd,file.server.type=inet,file.server.host=127.0.0.1,file.server.port={port},file.export=d");
    if let Some(dir) = creds {
        cmd.args(["--object", &format!("tls-creds-x509,id=tls0,dir={},endpoint=client", dir.display())]);
        opts.push_str(",file.tls-creds=tls0");
    }
    cmd.args(["--image-opts", &opts]);
    for c in cmds {
        cmd.args(["-c", c]);
    }
    cmd.output().expect("run qemu-io")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn assert_qemu_ok(out: &Output, what: &str) {
    let t = text(out);
    assert!(out.status.success() && !t.contains("failed"), "qemu-io {what} ({}):\n{t}", out.status);
}

#[test]
fn qemu_writes_and_reads_back_over_tls_and_the_write_is_dirty() {
    let s = scratch();
    let image = protected(&s, "d");
    let p = pki(&s);
    let port = free_port();
    let f = tls_filter(&s, "d", &format!("tcp:127.0.0.1:{port}"), &p.server, &[]);
    assert!(s.home.dirty("d").dirty_blocks.is_empty());

    let out = qemu_io_tls(port, Some(&p.client), &["write -P 0xa7 196608 65536", "read -P 0xa7 196608 65536"]);
    assert_qemu_ok(&out, "over TLS");
    assert_eq!(s.home.dirty("d").dirty_blocks.into_iter().collect::<Vec<_>>(), vec![3], "{}", f.log());

    // libnbd (gnutls) reads the same bytes back over TLS.
    let copy = s.path("copy.img");
    let out = Command::new(tool("nbdcopy"))
        .arg(format!("nbds://127.0.0.1:{port}/d?tls-certificates={}", p.client.display()))
        .arg(&copy)
        .output()
        .unwrap();
    assert!(out.status.success(), "nbdcopy over TLS: {}", text(&out));
    let copied = fs::read(&copy).unwrap();
    assert_eq!(copied, fs::read(&image).unwrap(), "nbdcopy over TLS read other bytes than the image holds");
    assert!(copied[196608..262144].iter().all(|&b| b == 0xa7));
    f.stop();
}

/// A minimal NBD client on TCP: greeting and client flags, then options.
struct RawClient {
    s: TcpStream,
}

impl RawClient {
    fn connect(port: u16) -> RawClient {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut g = [0u8; 18];
        s.read_exact(&mut g).unwrap();
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
        s.write_all(&3u32.to_be_bytes()).unwrap(); // FIXED_NEWSTYLE | NO_ZEROES
        RawClient { s }
    }

    /// Sends an option and returns (reply type, reply data) of its first reply.
    fn option(&mut self, option: u32, data: &[u8]) -> (u32, Vec<u8>) {
        let mut msg = b"IHAVEOPT".to_vec();
        msg.extend_from_slice(&option.to_be_bytes());
        msg.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        msg.extend_from_slice(data);
        self.s.write_all(&msg).unwrap();
        let mut hdr = [0u8; 20];
        self.s.read_exact(&mut hdr).unwrap();
        assert_eq!(u32::from_be_bytes(hdr[8..12].try_into().unwrap()), option);
        let kind = u32::from_be_bytes(hdr[12..16].try_into().unwrap());
        let mut body = vec![0u8; u32::from_be_bytes(hdr[16..20].try_into().unwrap()) as usize];
        self.s.read_exact(&mut body).unwrap();
        (kind, body)
    }

    /// Waits for the server to close the connection; `Err` if it has not
    /// within 30 s.
    fn wait_closed(&mut self) -> Result<(), String> {
        let mut buf = [0u8; 64];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

const NBD_OPT_GO: u32 = 7;
const NBD_OPT_STARTTLS: u32 = 5;
const NBD_OPT_EXPORT_NAME: u32 = 1;
const NBD_REP_ACK: u32 = 1;
const NBD_REP_ERR_TLS_REQD: u32 = 0x8000_0005;

#[test]
fn plaintext_clients_and_clients_without_a_certificate_from_the_ca_are_refused() {
    let s = scratch();
    let image = protected(&s, "d");
    let before = fs::read(&image).unwrap();
    let p = pki(&s);
    let port = free_port();
    let listen = format!("tcp:127.0.0.1:{port}");
    let mut f = tls_filter(&s, "d", &listen, &p.server, &[]);

    // Plaintext, by hand: GO gets TLS_REQD, and nothing of the export is told.
    let mut c = RawClient::connect(port);
    let mut go = 1u32.to_be_bytes().to_vec();
    go.extend_from_slice(b"d");
    go.extend_from_slice(&0u16.to_be_bytes());
    let (kind, msg) = c.option(NBD_OPT_GO, &go);
    assert_eq!(kind, NBD_REP_ERR_TLS_REQD, "{}", String::from_utf8_lossy(&msg));
    // EXPORT_NAME cannot be refused with an error: the server hangs up.
    let mut msg = b"IHAVEOPT".to_vec();
    msg.extend_from_slice(&NBD_OPT_EXPORT_NAME.to_be_bytes());
    msg.extend_from_slice(&1u32.to_be_bytes());
    msg.push(b'd');
    c.s.write_all(&msg).unwrap();
    c.wait_closed().unwrap();

    // Plaintext with the real clients.
    let out = Command::new(tool("nbdinfo")).arg(format!("nbd://127.0.0.1:{port}/d")).output().unwrap();
    assert!(!out.status.success(), "nbdinfo without TLS was served:\n{}", text(&out));
    let out = qemu_io_tls(port, None, &["write -P 0x11 0 65536"]);
    assert!(!out.status.success() || text(&out).contains("failed"), "qemu-io without TLS wrote:\n{}", text(&out));

    // TLS without a client certificate: refused in the TLS handshake.
    let out = Command::new(tool("nbdinfo"))
        .arg(format!("nbds://127.0.0.1:{port}/d?tls-certificates={}", p.anonymous.display()))
        .output()
        .unwrap();
    assert!(!out.status.success(), "nbdinfo without a client certificate was served:\n{}", text(&out));
    f.wait_line("peer sent no certificates", Duration::from_secs(10));
    f.stop();

    // A certificate from another CA (a new filter: refusals are logged at
    // most once every 10 s).
    let mut f = tls_filter(&s, "d", &listen, &p.server, &[]);
    let out = qemu_io_tls(port, Some(&p.stranger), &["write -P 0x22 0 65536"]);
    assert!(!out.status.success() || text(&out).contains("failed"), "a stranger's certificate wrote:\n{}", text(&out));
    let line = f.wait_line("TLS handshake failed", Duration::from_secs(10));
    assert!(line.contains("UnknownIssuer") && line.contains("tcp:127.0.0.1:"), "{line}");
    f.stop();

    assert!(s.home.dirty("d").dirty_blocks.is_empty(), "a refused client reached the export");
    assert!(fs::read(&image).unwrap() == before, "a refused client changed the image");
}

#[test]
fn a_client_that_stalls_after_starttls_is_dropped_at_the_handshake_timeout() {
    let s = scratch();
    protected(&s, "d");
    let p = pki(&s);
    let port = free_port();
    let mut f = tls_filter(&s, "d", &format!("tcp:127.0.0.1:{port}"), &p.server, &["--handshake-timeout", "1s"]);
    let started = Instant::now();
    let mut c = RawClient::connect(port);
    assert_eq!(c.option(NBD_OPT_STARTTLS, &[]), (NBD_REP_ACK, vec![]));
    // Half a TLS record header, then nothing.
    c.s.write_all(&[0x16, 0x03]).unwrap();
    if let Err(e) = c.wait_closed() {
        panic!("a client stalled in the TLS handshake was not dropped within 30 s ({e}):\n{}", f.log());
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "dropped after {took:?}, before the 1 s handshake timeout");
    assert!(took < Duration::from_secs(9), "dropped after {took:?}: the 1 s timeout did not cover TLS");
    f.wait_line("did not finish the handshake within 1 s", Duration::from_secs(10));
    f.stop();
}

#[test]
fn protect_with_tls_creds_serves_beyond_loopback_and_bad_creds_are_refused_naming_the_file() {
    let s = scratch();
    let image = protected(&s, "d");
    let p = pki(&s);
    let conf = s.home.dir.join("disks/d/disk.toml");
    let port = free_port();
    let listen = format!("tcp:0.0.0.0:{port}");

    s.home.run_ok(&["protect", "d", "--image", arg(&image), "--listen", &listen, "--tls-creds", arg(&p.server)]);
    let toml = fs::read_to_string(&conf).unwrap();
    assert!(toml.contains(&listen) && toml.contains("tls_creds") && !toml.contains("insecure_tcp"), "{toml}");
    let agent = s.home.agent(&[], &["d"]);
    assert!(!agent.log().contains("WARNING"), "the insecure warning for a TLS listener:\n{}", agent.log());
    assert_qemu_ok(&qemu_io_tls(port, Some(&p.client), &["write -P 0x5c 0 4096", "read -P 0x5c 0 4096"]), "agent");
    let out = Command::new(tool("nbdinfo")).arg(format!("nbd://127.0.0.1:{port}/d")).output().unwrap();
    assert!(!out.status.success(), "the agent served plaintext on a TLS listener:\n{}", text(&out));
    agent.stop();

    // A key others can read: refused by protect and by the agent, naming it.
    let key = p.server.join("server-key.pem");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
    let out = s.home.run(&["protect", "d", "--image", arg(&image), "--listen", &listen, "--tls-creds", arg(&p.server)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "protect accepted a group-readable key");
    assert!(err.contains(&key.display().to_string()) && err.contains("chmod 600"), "{err}");
    let mut agent = s.home.spawn_with(&["agent"], |_| {});
    assert!(!agent.wait(Duration::from_secs(30)).success(), "the agent started with a group-readable key");
    assert!(agent.log().contains("server-key.pem") && agent.log().contains("chmod 600"), "{}", agent.log());
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();

    // A server certificate from another CA, then an expired one.
    let cert = p.server.join("server-cert.pem");
    let good = fs::read(&cert).unwrap();
    let other = s.path("other-server");
    make_leaf(&p.other_ca, &other, "server", 30);
    fs::copy(other.join("server-cert.pem"), &cert).unwrap();
    fs::copy(other.join("server-key.pem"), &key).unwrap();
    let out = s.home.run(&["protect", "d", "--image", arg(&image), "--listen", &listen, "--tls-creds", arg(&p.server)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("server-cert.pem is not signed by"), "{err}");
    let expired = s.path("expired");
    make_leaf(&s.path("ca"), &expired, "server", -1);
    fs::copy(expired.join("server-cert.pem"), &cert).unwrap();
    fs::copy(expired.join("server-key.pem"), &key).unwrap();
    let out = s.home.run(&["filter", "d", "--listen", &listen, "--tls-creds", arg(&p.server)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("server-cert.pem expired on"), "{err}");
    fs::write(&cert, good).unwrap();
}
