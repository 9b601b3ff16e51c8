//! What the workspace's tests share (built with the `test-support` feature, which only
//! dev-dependencies turn on).

use std::path::{Path, PathBuf};

/// A throw-away CA and a server certificate for `127.0.0.1` and `localhost` signed by it, made
/// with the `openssl` command in `dir` (created if missing).
pub struct TestTls {
    /// The CA certificate (PEM), for clients to trust.
    pub ca: PathBuf,
    /// The server's certificate and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestTls {
    pub fn create(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("a directory for the test certificates");
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl").current_dir(dir).args(args).output().expect("openssl runs");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let ca_args = ["-days", "1", "-subj", "/CN=test CA", "-keyout", "ca-key.pem", "-out", "ca.pem"];
        openssl(&[&["req", "-x509"][..], &ec, &ca_args].concat());
        openssl(&[&["req"][..], &ec, &["-subj", "/CN=localhost", "-keyout", "key.pem", "-out", "req.pem"]].concat());
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("the certificate's extensions");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "req.pem",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-out",
            "cert.pem",
        ]);
        Self { ca: dir.join("ca.pem"), cert: dir.join("cert.pem"), key: dir.join("key.pem") }
    }
}
