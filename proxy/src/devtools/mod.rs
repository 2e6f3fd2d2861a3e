//! Development tools for the jwt filter: `kaname keys` makes a key pair and
//! a JWKS file, `kaname token` signs a JWT with it (or with an HMAC secret).
//!
//! ```sh
//! kaname keys --alg ES256 --kid k1 --out keys      # keys/k1.pem + keys/jwks.json
//! kaname keys --alg EdDSA --kid k2 --out keys      # rotation: jwks.json has k1 and k2
//! kaname token --key keys/k2.pem --kid k2 --sub alice --aud orders --claim 'roles=["admin"]'
//! JWT_SECRET=… kaname token -c kaname.yaml --filter auth --sub alice
//! ```
//!
//! Signing is aws-lc-rs's ([`signing`]), verification in the filter is
//! jsonwebtoken's: a token from here meets a second implementation.

pub mod alg;
pub mod keys;
pub mod signing;
pub mod token;

pub use keys::KeysArgs;
pub use token::TokenArgs;

/// An I/O error without its `(os error N)` tail, as kaname's other messages
/// print it: "No such file or directory".
fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}
