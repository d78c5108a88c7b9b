//! `proxy-config secret`: the certificates and trust bundles a proxy holds from SDS, as
//! `RESOURCE NAME  TYPE  STATUS  VALID CERT  SERIAL NUMBER  NOT AFTER  NOT BEFORE` (the
//! first certificate of each chain). Envoy redacts private keys in its dump; nothing
//! here ever prints key material.

use anyhow::Result;
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use serde_json::Value;
use x509_parser::pem::parse_x509_pem;

use super::{Output, Source, print_value};
use crate::envoy::dump::Entry;
use crate::table::Table;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    source: Source,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

pub async fn run(args: &Args) -> Result<()> {
    let fetched = args.source.config_dump(false).await?;
    let secrets = fetched.dump.secrets()?;
    match args.output {
        Output::Short => {
            if secrets.is_empty() {
                eprintln!(
                    "{} holds no secrets (no SDS resources, no static secrets)",
                    fetched.from
                );
            }
            print!("{}", table(&secrets).render());
        }
        out => {
            let raw: Vec<Value> = secrets
                .into_iter()
                .map(|e| e.raw)
                .filter(|v| !v.is_null())
                .collect();
            print_value(&Value::Array(raw), out)?;
        }
    }
    Ok(())
}

/// What the table shows of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CertInfo {
    valid_now: bool,
    serial: String,
    not_after: String,
    not_before: String,
}

fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| secs.to_string())
}

fn cert_info(pem: &[u8]) -> Option<CertInfo> {
    let (_, pem) = parse_x509_pem(pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let v = cert.validity();
    Some(CertInfo {
        valid_now: v.is_valid(),
        serial: cert.tbs_certificate.serial.to_str_radix(16),
        not_after: rfc3339(v.not_after.timestamp()),
        not_before: rfc3339(v.not_before.timestamp()),
    })
}

fn bytes_of(d: Option<&DataSource>) -> Option<Vec<u8>> {
    match d?.specifier.as_ref()? {
        data_source::Specifier::InlineBytes(b) => Some(b.clone()),
        data_source::Specifier::InlineString(s) => Some(s.clone().into_bytes()),
        // Files and variables live on the proxy's side; nothing to parse here.
        data_source::Specifier::Filename(_) | data_source::Specifier::EnvironmentVariable(_) => {
            None
        }
    }
}

fn kind_and_cert(s: &Secret) -> (&'static str, Option<CertInfo>) {
    match &s.r#type {
        Some(secret::Type::TlsCertificate(t)) => (
            "Cert Chain",
            bytes_of(t.certificate_chain.as_ref()).and_then(|b| cert_info(&b)),
        ),
        Some(secret::Type::ValidationContext(v)) => (
            "CA",
            bytes_of(v.trusted_ca.as_ref()).and_then(|b| cert_info(&b)),
        ),
        Some(secret::Type::SessionTicketKeys(_)) => ("Session Ticket Keys", None),
        Some(secret::Type::GenericSecret(_)) => ("Generic", None),
        None => ("", None),
    }
}

pub fn table(secrets: &[Entry<Secret>]) -> Table {
    let mut t = Table::new(
        &[
            "RESOURCE NAME",
            "TYPE",
            "STATUS",
            "VALID CERT",
            "SERIAL NUMBER",
            "NOT AFTER",
            "NOT BEFORE",
        ],
        5,
    );
    for e in secrets {
        let (kind, cert) = kind_and_cert(&e.resource);
        let (valid, serial, after, before) = match cert {
            Some(c) => (c.valid_now, c.serial, c.not_after, c.not_before),
            None => (false, String::new(), String::new(), String::new()),
        };
        t.row([
            e.resource.name.clone(),
            kind.to_string(),
            e.status.as_str().to_string(),
            valid.to_string(),
            serial,
            after,
            before,
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    // A self-signed certificate (openssl req -x509 -set_serial 0x1234abcd -days 7300).
    const PEM: &str = include_str!("testdata/cert.pem");

    #[test]
    fn certificate_columns() {
        let c = cert_info(PEM.as_bytes()).expect("parses");
        assert_eq!(c.serial, "1234abcd");
        assert_eq!(c.not_before, "2026-11-23T17:02:10Z");
        assert_eq!(c.not_after, "2046-11-18T17:02:10Z");
        assert!(c.valid_now);
        assert!(cert_info(b"not a pem").is_none());
    }
}
