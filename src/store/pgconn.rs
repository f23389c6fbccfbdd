//! Connecting to PostgreSQL, in plain TCP or over TLS, for every part of tm that does (the store,
//! its fleet tables, the agent queue): [`PgConfig::connect`] is the one place a connection is made.
//!
//! TLS follows libpq's URL parameters, which the driver's own parser does not all know:
//! - `sslmode`: `disable` (plain), `allow` and `prefer` (TLS when the server offers it, plain
//!   otherwise; the default), `require` (TLS or no connection), `verify-ca` (TLS with a server
//!   certificate signed by a trusted CA), `verify-full` (and issued for the host connected to);
//! - `sslrootcert`: the trusted CA certificates (PEM); by default `~/.postgresql/root.crt` when it
//!   exists. As in libpq, when CA certificates are at hand the server's chain is verified in every
//!   mode, so `require` then means `verify-ca`;
//! - `sslcert` and `sslkey`: a client certificate and its key (PEM) for servers that
//!   authenticate clients by certificate; by default `~/.postgresql/postgresql.crt` and `.key`
//!   when both exist.
//!
//! `sslmode` is ignored for Unix-domain sockets, as in libpq. Not supported, and refused with a
//! clear error rather than ignored: `sslrootcert=system`, `sslpassword` (encrypted keys), `sslcrl`.
//!
//! The stack is rustls (with ring) through `tokio-postgres-rustls`.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use postgres::config::{Host, SslMode};
use postgres::{Client, NoTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use rustls::{Error as TlsError, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The driver's settings for one server, and how connections to it are secured.
#[derive(Clone)]
pub(crate) struct PgConfig {
    config: postgres::Config,
    /// None: plain connections only (`sslmode=disable`, or a Unix socket).
    tls: Option<MakeRustlsConnect>,
}

impl Deref for PgConfig {
    type Target = postgres::Config;
    fn deref(&self) -> &postgres::Config {
        &self.config
    }
}

impl PgConfig {
    /// Opens a connection (TLS as the URL asked).
    pub(crate) fn connect(&self) -> Result<Client, postgres::Error> {
        match &self.tls {
            None => self.config.connect(NoTls),
            Some(tls) => self.config.connect(tls.clone()),
        }
    }

    /// Whether connections may use TLS (tests).
    #[cfg(test)]
    pub(crate) fn tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// `sslmode`, as libpq spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The TLS parameters of a URL's query, taken out before the driver parses the rest.
#[derive(Debug, Default)]
pub(crate) struct TlsParams {
    mode: Option<Mode>,
    root_cert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl TlsParams {
    /// Takes `key=value` if it is a TLS parameter (true), or leaves it to the driver (false).
    pub(crate) fn take(&mut self, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "sslmode" => {
                self.mode = Some(match value {
                    "disable" => Mode::Disable,
                    "allow" | "prefer" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    _ => {
                        return Err(format!(
                            "sslmode={value:?} is not one of disable, allow, prefer, require, \
                             verify-ca, verify-full"
                        ))
                    }
                })
            }
            "sslrootcert" if value == "system" => {
                return Err(
                    "sslrootcert=system is not supported: give the CA certificate's \
                            file (sslrootcert=/path/to/ca.pem)"
                        .into(),
                )
            }
            "sslrootcert" => self.root_cert = Some(value.to_string()),
            "sslcert" => self.cert = Some(value.to_string()),
            "sslkey" => self.key = Some(value.to_string()),
            "sslpassword" | "sslcrl" | "sslcrldir" => {
                return Err(format!("{key} is not supported"));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Applies the parameters to `config` and makes the TLS side.
    pub(crate) fn finish(self, mut config: postgres::Config) -> Result<PgConfig, String> {
        let unix_only = config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_)));
        let mode = self.mode.unwrap_or(Mode::Prefer);
        if mode == Mode::Disable || unix_only {
            config.ssl_mode(SslMode::Disable);
            return Ok(PgConfig { config, tls: None });
        }
        config.ssl_mode(match mode {
            Mode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".postgresql"));
        let default = |name: &str| home.as_ref().map(|d| d.join(name)).filter(|p| p.is_file());
        let root = match self.root_cert {
            Some(p) => Some(PathBuf::from(p)),
            None => default("root.crt"),
        };
        if root.is_none() && matches!(mode, Mode::VerifyCa | Mode::VerifyFull) {
            let m = if mode == Mode::VerifyCa {
                "verify-ca"
            } else {
                "verify-full"
            };
            return Err(format!(
                "sslmode={m} needs the CA certificate that signed the server's: give \
                 sslrootcert=/path/to/ca.pem (libpq's default ~/.postgresql/root.crt does not exist)"
            ));
        }
        let client = match (self.cert, self.key) {
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            (Some(_), None) | (None, Some(_)) => {
                return Err("sslcert and sslkey go together: give both or neither".into())
            }
            (None, None) => default("postgresql.crt").zip(default("postgresql.key")),
        };
        let tls = tls_config(root.as_deref(), mode == Mode::VerifyFull, client)?;
        Ok(PgConfig {
            config,
            tls: Some(MakeRustlsConnect::new(tls)),
        })
    }
}

fn read_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

fn tls_config(
    root: Option<&Path>,
    check_name: bool,
    client: Option<(PathBuf, PathBuf)>,
) -> Result<ClientConfig, String> {
    // ring rather than aws-lc-rs (rustls's default): a small C and assembly build where aws-lc is
    // a large one. rustls 0.23.48 marks ring's provider deprecated because ring has no
    // post-quantum key exchange; classical ECDHE is what libpq's OpenSSL offers too.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = match root {
        None => None,
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs("sslrootcert", path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?,
            )
        }
    };
    let verifier = Verifier {
        inner,
        check_name,
        provider: provider.clone(),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let certs = read_certs("sslcert", &cert)?;
            let key = PrivateKeyDer::from_pem_file(&key)
                .map_err(|e| format!("sslkey {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("sslcert/sslkey: {e}"))
        }
    }
}

/// The server's certificate as `sslmode` asks: not looked at without CA certificates (`prefer`,
/// `require`), its chain verified with them, and its name too for `verify-full`. The handshake's
/// signatures are always verified (the server proves it holds the certificate's key).
#[derive(Debug)]
struct Verifier {
    inner: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let Some(inner) = &self.inner else {
            return Ok(ServerCertVerified::assertion());
        };
        // The chain is verified before the name: a name error means the chain was good.
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
