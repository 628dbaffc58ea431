//! Certificates made for one test (rcgen), and the mTLS setup the Envoy suite and the TLS
//! suite share: ratelimitd's certificate from one CA, Envoy's client certificate from another,
//! and `examples/envoy/envoy.yaml` with its `ratelimitd` cluster over mTLS.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

use super::process::project;

/// A certificate authority made for one test.
pub struct Ca {
    pub issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

pub fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).expect("a CA certificate").pem();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

/// A certificate for `names` signed by `ca`, for a server or a client: (certificate, key).
pub fn leaf(ca: &Ca, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let key = KeyPair::generate().expect("a key");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("parameters");
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, &ca.issuer).expect("a certificate");
    (cert.pem(), key.serialize_pem())
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a certificate file");
    path
}

/// ratelimitd and Envoy set up for mTLS: ratelimitd's certificate names `ratelimitd` and
/// 127.0.0.1; Envoy's names `envoy.internal`, the one name ratelimitd allows. The files live as
/// long as this.
pub struct Mtls {
    pub dir: tempfile::TempDir,
    pub ratelimitd_ca: Ca,
}

impl Mtls {
    pub fn make() -> Mtls {
        let dir = tempfile::tempdir().expect("temp dir");
        let (servers, clients) = (ca("ratelimitd CA"), ca("Envoy CA"));
        let server = leaf(
            &servers,
            &["ratelimitd", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let envoy = leaf(
            &clients,
            &["envoy.internal"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        for (name, text) in [
            ("cert.pem", &server.0),
            ("key.pem", &server.1),
            ("envoy-ca.pem", &clients.pem),
            ("envoy.pem", &envoy.0),
            ("envoy.key", &envoy.1),
            ("ratelimitd-ca.pem", &servers.pem),
        ] {
            write(dir.path(), name, text);
        }
        Mtls {
            dir,
            ratelimitd_ca: servers,
        }
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// ratelimitd's flags: TLS with client certificates from Envoy's CA naming `envoy.internal`.
    pub fn ratelimitd_flags(&self) -> Vec<String> {
        [
            ("--grpc-tls-cert", self.file("cert.pem")),
            ("--grpc-tls-key", self.file("key.pem")),
            ("--grpc-tls-client-ca", self.file("envoy-ca.pem")),
            ("--grpc-tls-client-san", "envoy.internal".to_string()),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_string(), value])
        .collect()
    }

    /// grpcurl's flags to call ratelimitd as Envoy does.
    pub fn grpcurl_flags(&self) -> Vec<String> {
        vec![
            "-cacert".to_string(),
            self.file("ratelimitd-ca.pem"),
            "-cert".to_string(),
            self.file("envoy.pem"),
            "-key".to_string(),
            self.file("envoy.key"),
        ]
    }

    /// `examples/envoy/envoy.yaml` with its `ratelimitd` cluster replaced by
    /// `examples/envoy/ratelimitd-cluster-mtls.yaml`, its certificate paths set to these files.
    pub fn envoy_yaml(&self) -> String {
        let read = |path: &str| std::fs::read_to_string(project(path)).expect(path);
        let example = read("examples/envoy/envoy.yaml");
        let cluster: String = read("examples/envoy/ratelimitd-cluster-mtls.yaml")
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| format!("{line}\n"))
            .collect::<String>()
            .replace("/etc/envoy/tls", &self.dir.path().display().to_string());
        let start = example
            .find("    - name: ratelimitd\n")
            .expect("envoy.yaml has the ratelimitd cluster");
        let end = example
            .find("    - name: upstream\n")
            .expect("envoy.yaml has the upstream cluster");
        format!("{}{cluster}{}", &example[..start], &example[end..])
    }
}
