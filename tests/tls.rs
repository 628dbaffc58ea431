//! TLS and mTLS on the gRPC port, against a real ratelimitd and a real grpcurl, with
//! certificates made here (rcgen): plaintext refused, reflection, health and ShouldRateLimit
//! over TLS; client certificates checked against the CA and the allowed names; a certificate
//! replaced on disk through a symlink swap, as a Kubernetes Secret mount does, served to new
//! connections while an open one keeps working.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::process::{Ratelimitd, grpcurl_path, wait_until};
use common::tls::{Ca, Mtls, ca, leaf, write};
use prost::Message;
use rcgen::ExtendedKeyUsagePurpose;
use rustls_pki_types::pem::PemObject;

/// Writes a server certificate the way a Secret mount does: `cert.pem` and `key.pem` are
/// symlinks through `..data`, a symlink to a directory of this version; a new version is a
/// new directory and one rename of `..data`.
fn mount_version(dir: &Path, version: &str, cert: &str, key: &str) {
    let versioned = dir.join(version);
    std::fs::create_dir_all(&versioned).unwrap();
    write(&versioned, "cert.pem", cert);
    write(&versioned, "key.pem", key);
    let staged = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&staged);
    std::os::unix::fs::symlink(version, &staged).unwrap();
    std::fs::rename(&staged, dir.join("..data")).unwrap();
    for name in ["cert.pem", "key.pem"] {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

/// grpcurl with `args` (TLS flags included); its exit status and output.
fn grpcurl_tls(args: &[&str]) -> (bool, String) {
    let output = Command::new(grpcurl_path())
        .args(["-max-time", "10"])
        .args(args)
        .output()
        .expect("grpcurl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A TLS client trusting `roots`, offering `alpn`.
fn connector(roots: &[&Ca], alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for ca in roots {
        let der = rustls_pki_types::CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap();
        store.add(der).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// `GET path` over HTTPS (HTTP/1.1) from the admin port at `addr`, trusting `ca`: the whole
/// response, or `None` if the connection or handshake fails.
fn https_get(addr: &str, path: &str, ca: &Ca) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = connector(&[ca], b"http/1.1")
            .connect(name, tcp)
            .await
            .ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).await.ok()?;
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await.ok()?;
        Some(answer)
    })
}

/// `ratelimitd health` against `addr` with `args`: whether it said SERVING and exited 0.
fn health(addr: &str, args: &[&str]) -> bool {
    let output = Command::new(env!("CARGO_BIN_EXE_ratelimitd"))
        .args(["health", "--grpc-addr", addr])
        .args(args)
        .output()
        .expect("ratelimitd health runs");
    output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "SERVING"
}

const CHECK: &str = r#"{"domain":"mega-api","descriptors":[{"entries":[{"key":"api_key","value":"tls"},{"key":"bucket","value":"default"}]}]}"#;
const SHOULD_RATE_LIMIT: &str = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// ratelimitd on the seed rules with TLS from `cert` and `key`, and `more` flags.
fn start_tls(cert: &Path, key: &Path, more: &[&str]) -> Ratelimitd {
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let mut flags = vec!["--grpc-tls-cert", cert, "--grpc-tls-key", key];
    flags.extend_from_slice(more);
    Ratelimitd::start_with(config(), 0, &flags)
}

fn config() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
}

#[test]
fn tls_refuses_plaintext_and_serves_reflection_health_and_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let authority = ca("test CA");
    let (cert, key) = leaf(
        &authority,
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (cert, key) = (
        write(dir.path(), "cert.pem", &cert),
        write(dir.path(), "key.pem", &key),
    );
    let ca_file = write(dir.path(), "ca.pem", &authority.pem);
    let rl = start_tls(&cert, &key, &["--http-tls"]);
    let healthcheck = https_get(&rl.http_addr, "/healthcheck", &authority);
    assert!(
        healthcheck.is_some_and(|a| a.starts_with("HTTP/1.1 200")),
        "the admin port over HTTPS, with the same certificate"
    );
    let plain = std::net::TcpStream::connect(&rl.http_addr).and_then(|mut s| {
        use std::io::{Read, Write};
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        Ok(answer)
    });
    assert!(
        !plain.unwrap_or_default().contains("200 OK"),
        "plain HTTP is not answered on an HTTPS admin port"
    );
    let ca_file = ca_file.to_str().unwrap();
    let (ok, text) = grpcurl_tls(&["-plaintext", &rl.addr, "list"]);
    assert!(!ok, "plaintext is refused: {text}");
    let (ok, text) = grpcurl_tls(&["-cacert", ca_file, &rl.addr, "list"]);
    assert!(
        ok && text.contains("envoy.service.ratelimit.v3.RateLimitService"),
        "{text}"
    );
    let (ok, text) = grpcurl_tls(&["-cacert", ca_file, &rl.addr, "grpc.health.v1.Health/Check"]);
    assert!(ok && text.contains("SERVING"), "{text}");
    let (ok, text) = grpcurl_tls(&["-cacert", ca_file, "-d", CHECK, &rl.addr, SHOULD_RATE_LIMIT]);
    assert!(ok && text.contains(r#""overallCode": "OK""#), "{text}");
    assert!(health(&rl.addr, &["--tls-ca", ca_file]), "health over TLS");
    assert!(
        !health(&rl.addr, &[]),
        "health in plaintext fails on a TLS port"
    );
    let other = ca("another CA");
    let other_file = write(dir.path(), "other.pem", &other.pem);
    let (ok, _) = grpcurl_tls(&["-cacert", other_file.to_str().unwrap(), &rl.addr, "list"]);
    assert!(!ok, "a client that does not trust the server's CA fails");
    rl.stop();
}

#[test]
fn mtls_needs_a_client_certificate_from_the_ca_with_an_allowed_name() {
    let dir = tempfile::tempdir().unwrap();
    let servers = ca("server CA");
    let clients = ca("client CA");
    let (cert, key) = leaf(
        &servers,
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (cert, key) = (
        write(dir.path(), "cert.pem", &cert),
        write(dir.path(), "key.pem", &key),
    );
    let server_ca = write(dir.path(), "server-ca.pem", &servers.pem);
    let client_ca = write(dir.path(), "client-ca.pem", &clients.pem);
    let client = |name: &str, by: &Ca| {
        let (cert, key) = leaf(by, &[name], ExtendedKeyUsagePurpose::ClientAuth);
        (
            write(dir.path(), &format!("{name}.pem"), &cert),
            write(dir.path(), &format!("{name}.key"), &key),
        )
    };
    let envoy = client("envoy.internal", &clients);
    let stranger = client("stranger.internal", &clients);
    let forged = client("envoy.forged", &servers);
    let rl = start_tls(
        &cert,
        &key,
        &[
            "--grpc-tls-client-ca",
            client_ca.to_str().unwrap(),
            "--grpc-tls-client-san",
            "envoy.internal,10.0.0.1",
        ],
    );
    let server_ca = server_ca.to_str().unwrap();
    let call = |cert: Option<&(PathBuf, PathBuf)>| {
        let mut args = vec!["-cacert", server_ca];
        if let Some((cert, key)) = cert {
            args.extend([
                "-cert",
                cert.to_str().unwrap(),
                "-key",
                key.to_str().unwrap(),
            ]);
        }
        args.extend(["-d", CHECK, rl.addr.as_str(), SHOULD_RATE_LIMIT]);
        grpcurl_tls(&args)
    };
    let (ok, text) = call(None);
    assert!(!ok, "no client certificate: refused ({text})");
    let (ok, text) = call(Some(&stranger));
    assert!(!ok, "a name outside the allow-list: refused ({text})");
    let (ok, text) = call(Some(&forged));
    assert!(!ok, "a certificate from another CA: refused ({text})");
    let (ok, text) = call(Some(&envoy));
    assert!(
        ok && text.contains(r#""overallCode": "OK""#),
        "an allowed client: {text}"
    );
    let (cert, key) = (envoy.0.to_str().unwrap(), envoy.1.to_str().unwrap());
    let with_cert = ["--tls-ca", server_ca, "--tls-cert", cert, "--tls-key", key];
    assert!(health(&rl.addr, &with_cert), "health over mTLS");
    assert!(
        !health(&rl.addr, &["--tls-ca", server_ca]),
        "health without a client certificate"
    );
    rl.stop();
}

/// A TLS client of our own, for a connection kept open across the rotation.
async fn open_connection(addr: &str, roots: &[&Ca]) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector(roots, b"h2").connect(name, tcp).await.unwrap();
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// One ShouldRateLimit call on `client`'s connection: whether it was answered with grpc-status 0.
async fn call_on(client: &mut h2::client::SendRequest<bytes::Bytes>, addr: &str) -> bool {
    let head = tonic::codegen::http::Request::post(format!("https://{addr}/{SHOULD_RATE_LIMIT}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let message = common::seed_request("rotation", "default").encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&message);
    let Ok(ready) = client.clone().ready().await else {
        return false;
    };
    *client = ready;
    let Ok((answer, mut body)) = client.send_request(head, false) else {
        return false;
    };
    if body.send_data(framed.into(), true).is_err() {
        return false;
    }
    let Ok(answer) = answer.await else {
        return false;
    };
    let mut answer = answer.into_body();
    while let Some(chunk) = answer.data().await {
        if chunk.is_err() {
            return false;
        }
    }
    let trailers = answer.trailers().await.ok().flatten();
    trailers.is_some_and(|t| t.get("grpc-status").is_some_and(|s| s == "0"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swapped_on_disk_serves_new_connections_and_open_ones_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (ca("first CA"), ca("second CA"));
    let pair = |ca: &Ca| leaf(ca, &["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let (cert, key) = pair(&first);
    mount_version(dir.path(), "v1", &cert, &key);
    let first_file = write(dir.path(), "first-ca.pem", &first.pem);
    let second_file = write(dir.path(), "second-ca.pem", &second.pem);
    let rl = start_tls(
        &dir.path().join("cert.pem"),
        &dir.path().join("key.pem"),
        &[],
    );
    let mut open = open_connection(&rl.addr, &[&first, &second]).await;
    assert!(
        call_on(&mut open, &rl.addr).await,
        "the open connection is answered"
    );
    let (first_file, second_file) = (first_file.to_str().unwrap(), second_file.to_str().unwrap());
    let list = |ca: &str| grpcurl_tls(&["-cacert", ca, &rl.addr, "list"]).0;
    assert!(list(first_file) && !list(second_file));
    let (cert, key) = pair(&second);
    mount_version(dir.path(), "v2", &cert, &key);
    wait_until(
        Duration::from_secs(10),
        "the new certificate served",
        || list(second_file).then_some(()),
    );
    assert!(
        !list(first_file),
        "new connections get the new certificate only"
    );
    assert!(
        call_on(&mut open, &rl.addr).await,
        "the connection opened before the swap still works"
    );
    rl.stop();
}

#[test]
fn envoy_speaks_mtls_to_ratelimitd_and_limits_as_in_plaintext() {
    let mtls = Mtls::make();
    let flags = mtls.ratelimitd_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let rl = Ratelimitd::start_with(config(), 0, &flags);
    let upstream = common::process::Upstream::start();
    let envoy_yaml = mtls.envoy_yaml();
    // The configuration the docs show, as Envoy itself validates it.
    let validate = write(mtls.dir.path(), "validate.yaml", &envoy_yaml);
    let checked = Command::new(common::process::envoy_path())
        .args(["--mode", "validate", "-c"])
        .arg(&validate)
        .output()
        .expect("envoy runs");
    assert!(
        checked.status.success(),
        "envoy --mode validate: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let envoy = common::process::Envoy::start_from(envoy_yaml, &rl.addr, &upstream.addr);
    let agent = common::process::http_agent();
    let statuses = common::within_one_window_blocking(60, || {
        let key = common::fresh_key("mtls");
        (0..61)
            .map(|_| {
                agent
                    .get(format!("http://{}/leads", envoy.addr))
                    .header("x-api-key", &key)
                    .call()
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            })
            .collect::<Vec<u16>>()
    });
    assert!(statuses[..60].iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        statuses[60], 429,
        "the 61st is limited: Envoy asked over mTLS"
    );
    rl.stop();
}

/// Redis over TLS with a CA and a client certificate of one's own (`--redis-tls-*`,
/// envoyproxy/ratelimit's `REDIS_TLS_CACERT` and `REDIS_TLS_CLIENT_*`): a real `redis-server`
/// that speaks only TLS on its TLS port and requires a client certificate.
#[test]
fn redis_over_tls_with_its_own_ca_and_a_client_certificate_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (servers, clients) = (ca("Redis CA"), ca("Redis clients CA"));
    let (cert, key) = leaf(
        &servers,
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(
        &clients,
        &["ratelimitd"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let (cert, key) = (
        write(dir.path(), "redis.pem", &cert),
        write(dir.path(), "redis-key.pem", &key),
    );
    let clients_ca = write(dir.path(), "clients-ca.pem", &clients.pem);
    let servers_ca = write(dir.path(), "redis-ca.pem", &servers.pem);
    let client_cert = write(dir.path(), "client.pem", &client_cert);
    let client_key = write(dir.path(), "client-key.pem", &client_key);
    let tls_port = common::redis::free_port(false);
    let redis = common::redis::RedisServer::start_on(
        common::redis::free_port(false),
        &[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-ca-cert-file",
            clients_ca.to_str().unwrap(),
            "--tls-auth-clients",
            "yes",
        ],
    );
    let backend = format!("rediss://127.0.0.1:{tls_port}");
    let start = |with_client: bool| {
        let mut flags = vec![
            "--backend".to_string(),
            backend.clone(),
            "--on-backend-error".to_string(),
            "deny".to_string(),
            "--redis-tls-ca".to_string(),
            servers_ca.display().to_string(),
        ];
        if with_client {
            flags.extend([
                "--redis-tls-cert".to_string(),
                client_cert.display().to_string(),
                "--redis-tls-key".to_string(),
                client_key.display().to_string(),
            ]);
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        Ratelimitd::start_with(&common::process::project("config"), 0, &flags)
    };

    // Without the client certificate Redis refuses the handshake: never reached, not ready.
    let refused = start(false);
    std::thread::sleep(Duration::from_millis(1500));
    let (status, body) = common::http_get(&refused.http_addr, "/healthcheck");
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("waiting for Redis"), "{body}");
    refused.stop();

    let rl = start(true);
    wait_until(
        Duration::from_secs(10),
        "ratelimitd reaches Redis over TLS",
        || (common::http_get(&rl.http_addr, "/healthcheck").0 == 200).then_some(()),
    );
    let output = Command::new(grpcurl_path())
        .args(["-plaintext", "-d"])
        .arg(r#"{"domain":"mega-api","descriptors":[{"entries":[{"key":"api_key","value":"tls-key"},{"key":"bucket","value":"default"}]}]}"#)
        .arg(&rl.addr)
        .arg("envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit")
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&output.stdout);
    assert!(answer.contains("\"overallCode\": \"OK\""), "{answer}");
    assert!(
        redis.dbsize() >= 2,
        "the minute and hour counters are in Redis"
    );
    rl.stop();
}
