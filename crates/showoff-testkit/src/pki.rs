//! Test certificates made with rcgen: a CA, server certificates for names and addresses, client
//! certificates (valid, expired, from another CA) — everything as PEM, as operators hand it in.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    date_time_ymd,
};
use showoff_server::PemPair;

/// A certificate authority that signs test certificates.
pub struct TestCa {
    /// The CA certificate, PEM (what clients and servers trust).
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> PemPair {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate whose common name and DNS name are `identity`.
    pub fn client(&self, identity: &str) -> PemPair {
        self.sign(client_params(identity))
    }

    /// A client certificate that expired in 2021.
    pub fn expired_client(&self, identity: &str) -> PemPair {
        let mut params = client_params(identity);
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2021, 1, 1);
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> PemPair {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        PemPair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn client_params(identity: &str) -> CertificateParams {
    let mut params = CertificateParams::new(vec![identity.to_string()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, identity);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}
